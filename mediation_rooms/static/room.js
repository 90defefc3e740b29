// 解纷 join page and in-room UI. Plain ES2017, no build step: it must run in WeChat's in-app
// browser as well as desktop Chrome/Edge/Firefox/Safari. The protocol is PROTOCOL.md.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var token = "";
  // A mangled link (a broken %-escape) must reach the "链接不完整" page, not stop the script.
  try { token = decodeURIComponent((location.hash || "").replace(/^#/, "")); } catch (e) { token = ""; }
  var state = { ws: null, pc: null, stream: null, seat: null, tracks: [], ended: false,
                joinMessage: null, retries: 0, moves: 0, presence: null, iceServers: [] };
  var SEAT_NAMES = { mediator: "调解员", applicant: "申请人", respondent: "被申请人",
                     interpreter: "翻译", applicant_agent: "申请人代理人", respondent_agent: "被申请人代理人" };
  var CLOSE_FINAL = { 4401: true, 4403: true, 4409: true, 4410: true };
  var CLOSE_MOVED = 4302;
  // Debug handle, read-only, for tests and support (the browser console): the live
  // RTCPeerConnection, the offer's track list (mid -> seat, kind, direction) and this page's seat.
  // Nothing on the page reads it.
  window.jiefenRoom = {
    get pc() { return state.pc; },
    get tracks() { return state.tracks; },
    get seat() { return state.seat; }
  };

  function show(step) {
    ["step-consent", "step-devices", "step-waiting", "step-room", "step-closed"].forEach(function (id) {
      $(id).hidden = id !== step;
    });
  }
  function closed(title, message) {
    state.ended = true;
    $("closed-title").textContent = title;
    $("closed-message").textContent = message;
    stopMedia();
    show("step-closed");
  }
  function stopMedia() {
    if (state.pc) { state.pc.close(); state.pc = null; }
    if (state.stream) { state.stream.getTracks().forEach(function (t) { t.stop(); }); }
  }

  // -- 长者模式 --------------------------------------------------------------------------------
  var elder = localStorage.getItem("jiefen-elder") === "1";
  function applyElder() {
    document.body.classList.toggle("elder", elder);
    $("elder-toggle").setAttribute("aria-pressed", String(elder));
    $("elder-toggle").textContent = elder ? "标准模式" : "长者模式";
  }
  $("elder-toggle").onclick = function () { elder = !elder; localStorage.setItem("jiefen-elder", elder ? "1" : "0"); applyElder(); };
  applyElder();

  if (!token) { closed("链接不完整", "请点开调解员发给您的完整链接。"); return; }

  // -- 1. consent --------------------------------------------------------------------------------
  $("to-devices").onclick = function () {
    var msg = $("consent-message");
    if (!$("ack-notices").checked || !$("consent-recording").checked) {
      msg.textContent = "请先阅读须知，并勾选同意录音录像。"; msg.className = "message error"; return;
    }
    show("step-devices");
    checkDevices();
  };

  // -- 2. device check ---------------------------------------------------------------------------
  function deviceError(error) {
    var name = error && error.name;
    if (name === "NotAllowedError" || name === "SecurityError")
      return "没有得到使用摄像头和麦克风的允许。请在浏览器或微信的设置里允许后，刷新本页。";
    if (name === "NotFoundError" || name === "OverconstrainedError")
      return "没有找到摄像头或麦克风。请换一台有摄像头的手机或电脑。";
    if (name === "NotReadableError") return "摄像头或麦克风正被其他应用使用，请关闭其他应用后重试。";
    if (!navigator.mediaDevices) return "这个浏览器不能视频通话。请用微信或新版浏览器打开，并确认地址以 https 开头。";
    return "打开摄像头和麦克风时出错：" + (error && error.message ? error.message : name);
  }
  function checkDevices() {
    var status = $("device-status");
    // Back here after a refused identity: release the camera first (phones cannot open it twice).
    $("enter").disabled = true;
    if (state.stream) { state.stream.getTracks().forEach(function (t) { t.stop(); }); state.stream = null; }
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      status.textContent = deviceError(null); status.className = "message error"; return;
    }
    navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480, frameRate: 30 } })
      .then(function (stream) {
        state.stream = stream;
        $("preview").srcObject = stream;
        status.textContent = "摄像头和麦克风正常。" + (navigator.onLine === false ? "但网络好像断了。" : "");
        status.className = "message";
        meter(stream);
        $("enter").disabled = false;
      })
      .catch(function (error) { status.textContent = deviceError(error); status.className = "message error"; });
  }
  function meter(stream) {
    var AudioContext = window.AudioContext || window.webkitAudioContext;
    if (!AudioContext) return;
    var context = new AudioContext(), analyser = context.createAnalyser(), data = new Uint8Array(256);
    context.createMediaStreamSource(stream).connect(analyser);
    (function tick() {
      analyser.getByteTimeDomainData(data);
      var peak = 0; for (var i = 0; i < data.length; i++) peak = Math.max(peak, Math.abs(data[i] - 128));
      $("mic-level").style.width = Math.min(100, peak * 1.6) + "%";
      if (!$("step-devices").hidden) requestAnimationFrame(tick);
    })();
  }
  $("speaker-test").onclick = function () {
    var AudioContext = window.AudioContext || window.webkitAudioContext;
    if (!AudioContext) return;
    var context = new AudioContext(), osc = context.createOscillator();
    osc.frequency.value = 660; osc.connect(context.destination); osc.start(); osc.stop(context.currentTime + 0.6);
  };
  $("enter").onclick = function () {
    state.joinMessage = { type: "join", token: token, identity: $("identity").value || null,
                          consent_recording: true, acknowledged_notices: true };
    show("step-waiting");
    connect();
  };

  // -- 3. signalling -----------------------------------------------------------------------------
  function send(message) { if (state.ws && state.ws.readyState === 1) state.ws.send(JSON.stringify(message)); }
  // Every (re)connection first asks which media process hosts the room: after a drop it may
  // be another one (the first went down, or the room moved). A refusal there is final.
  function connect() {
    var request = new XMLHttpRequest();
    request.open("POST", "/rooms/placement");
    request.setRequestHeader("Content-Type", "application/json");
    request.timeout = 10000;
    request.onload = function () {
      var body = null;
      try { body = JSON.parse(request.responseText); } catch (e) { body = null; }
      if (request.status === 200 && body && body.signalling_url) { openSocket(body.signalling_url); return; }
      if (body && (request.status === 403 || request.status === 410 || request.status === 400)) {
        closed("无法进入", body.message);
        return;
      }
      retryLater(body && body.message);
    };
    request.onerror = request.ontimeout = function () { retryLater(null); };
    request.send(JSON.stringify({ token: token }));
  }
  function retryLater(message) {
    if (state.ended) return;
    state.retries += 1;
    notice(message || "网络中断，正在重新连接……");
    setTimeout(connect, Math.min(10000, 1000 * state.retries));
  }
  function openSocket(url) {
    // A path means this page's own origin (one process serves the page and the room).
    if (url.charAt(0) === "/") url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + url;
    var ws;
    try { ws = new WebSocket(url); } catch (e) {
      // e.g. a ws:// media address from an https page (a configuration error): say so, retry.
      if (window.console) console.error("cannot open", url, e);
      retryLater("视频服务连接不上，正在重试……");
      return;
    }
    state.ws = ws;
    ws.onopen = function () { send(state.joinMessage); };
    // Only the current socket speaks for the page: one given up on (a refused identity) must
    // neither reconnect nor act on late messages, or it comes back as a "second device".
    ws.onmessage = function (event) { if (ws === state.ws) handle(JSON.parse(event.data)); };
    ws.onclose = function (event) {
      if (ws !== state.ws || state.ended || CLOSE_FINAL[event.code]) return;
      // The network dropped, or the room moved to another media process (CLOSE_MOVED):
      // reconnect with the same join; an admitted seat goes straight back in.
      // The first move is followed at once; repeated ones back off like any other retry.
      if (event.code === CLOSE_MOVED && state.moves++ === 0) { notice("正在为您切换视频线路，请稍候……"); setTimeout(connect, 300); return; }
      retryLater(null);
    };
  }
  function handle(message) {
    switch (message.type) {
      case "welcome":
        state.seat = message.seat; state.retries = 0; state.moves = 0; state.iceServers = message.ice_servers || [];
        $("mediator-panel").hidden = message.seat !== "mediator";
        break;
      case "waiting": $("waiting-message").textContent = message.message; show("step-waiting"); break;
      case "admitted": break;
      case "offer": answer(message); break;
      case "presence": state.presence = message; renderPresence(); break;
      case "notice": notice(message.message); break;
      case "chat": chatLine(message.seat, message.text); break;
      case "seat_opened": showInvite(message); break;
      case "replaced": closed("已在其他设备进入", message.message); break;
      case "moved": notice(message.message); break;
      case "removed": closed("已离开调解室", message.message); break;
      case "denied": closed("暂未获准进入", message.message); break;
      case "ended": closed("调解已结束", message.message); break;
      case "error":
        if (message.code === "moved") break;  // the socket closes with CLOSE_MOVED: see onclose
        if (!$("step-consent").hidden || !$("step-waiting").hidden) {
          if (message.code === "identity_mismatch" || message.code === "identity_required" ||
              message.code === "consent_required") {
            show("step-consent");
            $("consent-message").textContent = message.message; $("consent-message").className = "message error";
            if (state.ws) { var old = state.ws; state.ws = null; old.close(); }
            return;
          }
          closed("无法进入", message.message);
        } else if (INVITE_ERRORS[message.code]) inviteMessage(message.message, true);
        else notice(message.message);
        break;
    }
  }

  // -- 4. media ----------------------------------------------------------------------------------
  // Offers are answered one at a time, in order: a renegotiation (a seat was opened) must not
  // overtake the offer that created the connection it renegotiates.
  var negotiation = Promise.resolve();
  function answer(offer) {
    negotiation = negotiation.then(function () { return negotiate(offer); })
      .catch(function (error) { if (window.console) console.error("offer failed", error); });
  }
  function slotOf(mid) { return state.tracks.filter(function (t) { return t.mid === mid; })[0]; }
  function newPeerConnection() {
    if (state.pc) state.pc.close();
    var pc = new RTCPeerConnection({ iceServers: state.iceServers, bundlePolicy: "max-bundle" });
    state.pc = pc;
    pc.onicecandidate = function (event) {
      if (event.candidate) send({ type: "ice", candidate: event.candidate.candidate, sdpMid: event.candidate.sdpMid });
    };
    // Media gone for good (the media process or its host died without closing the socket, which
    // can then look open for minutes): give that socket up and reconnect through placement.
    pc.onconnectionstatechange = function () {
      if (pc !== state.pc || pc.connectionState !== "failed" || state.ended) return;
      var old = state.ws; state.ws = null;
      if (old) old.close();
      retryLater(null);
    };
    pc.ontrack = function (event) {
      var slot = slotOf(event.transceiver.mid);
      if (!slot) return;
      var video = tile(slot.seat).querySelector("video");
      if (!video.srcObject) video.srcObject = new MediaStream();
      // After a reconnect the tile still holds the old connection's (ended) track of this kind,
      // which a browser would go on showing: replace it.
      video.srcObject.getTracks().forEach(function (old) {
        if (old.kind === event.track.kind && old !== event.track) video.srcObject.removeTrack(old);
      });
      video.srcObject.addTrack(event.track);
    };
    return pc;
  }
  // A first offer (or one after a reconnect) gets a new peer connection; a renegotiation is
  // answered on the current one, whose media keeps flowing: only the new seat's m-lines are new.
  function negotiate(offer) {
    var pc = state.pc;
    if (!offer.renegotiation || !pc || pc.signalingState === "closed") pc = newPeerConnection();
    state.tracks = offer.tracks;
    return pc.setRemoteDescription({ type: "offer", sdp: offer.sdp }).then(function () {
      pc.getTransceivers().forEach(function (transceiver) {
        var slot = slotOf(transceiver.mid);
        if (slot && slot.direction === "send") {
          var local = state.stream.getTracks().filter(function (t) { return t.kind === slot.kind; })[0];
          transceiver.direction = "sendonly";
          if (local && transceiver.sender.track !== local) transceiver.sender.replaceTrack(local);
        } else transceiver.direction = "recvonly";
      });
      return pc.createAnswer();
    }).then(function (description) { return pc.setLocalDescription(description); })
      .then(function () { send({ type: "answer", sdp: pc.localDescription.sdp }); show("step-room"); });
  }
  function tile(seat) {
    var id = "tile-" + seat, element = $(id);
    if (element) return element;
    element = document.createElement("div"); element.id = id; element.className = "tile";
    element.innerHTML = '<video autoplay playsinline></video><span class="label"></span>';
    element.querySelector(".label").textContent = SEAT_NAMES[seat] || seat;
    if (seat === state.seat) { element.querySelector("video").muted = true; element.querySelector("video").srcObject = state.stream; }
    $("tiles").appendChild(element);
    return element;
  }
  function notice(text) { var n = $("room-notice"); n.textContent = text; n.hidden = false; }
  function chatLine(seat, text) {
    var line = document.createElement("div"); line.textContent = (SEAT_NAMES[seat] || seat) + "：" + text;
    $("chat-log").appendChild(line); $("chat-log").scrollTop = 1e6;
  }
  $("chat-form").onsubmit = function (event) {
    event.preventDefault(); var text = $("chat-text").value.trim();
    if (text) send({ type: "chat", text: text }); $("chat-text").value = "";
  };
  $("toggle-mic").onclick = function () { toggle("audio", this, "麦克风"); };
  $("toggle-camera").onclick = function () { toggle("video", this, "摄像头"); };
  function toggle(kind, button, name) {
    state.stream.getTracks().forEach(function (t) {
      if (t.kind === kind) { t.enabled = !t.enabled; button.textContent = (t.enabled ? "关闭" : "打开") + name; }
    });
  }

  // -- presence, mediator controls -----------------------------------------------------------
  function renderPresence() {
    var p = state.presence; if (!p) return;
    tile(state.seat);
    p.participants.forEach(function (person) {
      if (person.seat === state.seat) return;
      var element = tile(person.seat);
      element.classList.toggle("absent", !person.present || !person.admitted || person.on_hold);
      element.querySelector(".label").textContent = (person.role_name) + " " + person.name +
        (person.muted ? "（已静音）" : "") + (person.on_hold ? "（等候中）" : "");
    });
    if (state.seat !== "mediator") return;
    renderInvite(p.participants);
    var waiting = $("waiting-list"), list = $("participant-list");
    waiting.innerHTML = ""; list.innerHTML = "";
    p.participants.forEach(function (person) {
      if (person.seat === "mediator") return;
      var row = document.createElement("div"); row.className = "row";
      var label = document.createElement("span"); label.textContent = person.role_name + " " + person.name + " ";
      row.appendChild(label);
      if (person.waiting) {
        row.appendChild(button("允许进入", { type: "admit", seat: person.seat }));
        row.appendChild(button("拒绝", { type: "deny", seat: person.seat }));
        waiting.appendChild(row);
      } else if (person.present) {
        row.appendChild(button(person.muted ? "取消静音" : "静音", { type: "mute", seat: person.seat, muted: !person.muted }));
        row.appendChild(button("请离开", { type: "remove", seat: person.seat }));
        list.appendChild(row);
      }
    });
  }
  function button(text, message) {
    var b = document.createElement("button"); b.type = "button"; b.textContent = text;
    b.onclick = function () { send(message); }; return b;
  }
  // 邀请翻译或代理人: the server opens the seat and answers with its link (seat_opened).
  var EXTRA_SEATS = ["interpreter", "applicant_agent", "respondent_agent"], MAX_EXTRA_SEATS = 2;
  var INVITE_ERRORS = { seat_taken: true, not_extra_seat: true, too_many_seats: true };
  function renderInvite(participants) {
    var taken = {}, extras = 0, select = $("invite-seat"), free = null;
    participants.forEach(function (person) {
      taken[person.seat] = true;
      if (EXTRA_SEATS.indexOf(person.seat) >= 0) extras += 1;
    });
    Array.prototype.forEach.call(select.options, function (option) {
      option.disabled = !!taken[option.value];
      if (!option.disabled && free === null) free = option.value;
    });
    if (select.options[select.selectedIndex].disabled && free !== null) select.value = free;
    var full = extras >= MAX_EXTRA_SEATS || free === null;
    $("invite-form").hidden = full;
    $("invite-full").hidden = !full;
  }
  $("invite-open").onclick = function () {
    var name = $("invite-name").value.trim();
    if (!name) { inviteMessage("请先填写对方的姓名。", true); return; }
    send({ type: "open_seat", seat: $("invite-seat").value, name: name });
  };
  function inviteMessage(text, error) {
    $("invite-message").textContent = text; $("invite-message").className = "message" + (error ? " error" : "");
  }
  function showInvite(message) {
    $("invite-name").value = "";
    inviteMessage("已为" + (SEAT_NAMES[message.seat] || message.seat) + " " + message.name +
      " 生成进入链接，请复制后发给对方。对方进入后会在等候室，由您允许进入。", false);
    $("invite-link").value = message.link;
    $("invite-copy").textContent = "复制链接";
    $("invite-result").hidden = false;
  }
  $("invite-copy").onclick = function () {
    var field = $("invite-link"), copy = $("invite-copy");
    function copied() { copy.textContent = "已复制"; }
    function byHand() {
      field.focus(); field.select();
      try { if (document.execCommand("copy")) { copied(); return; } } catch (e) { /* below */ }
      copy.textContent = "请长按链接复制";
    }
    if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(field.value).then(copied, byHand);
    else byHand();
  };
  Array.prototype.forEach.call(document.querySelectorAll("[data-caucus]"), function (b) {
    b.onclick = function () { send({ type: "caucus", "with": b.getAttribute("data-caucus") || null }); };
  });
  $("end").onclick = function () { if (confirm("确定结束本次调解吗？结束后不能再进入。")) send({ type: "end" }); };

  // -- quality indicator and active speaker ---------------------------------------------------
  setInterval(function () {
    if (!state.pc) return;
    state.pc.getStats().then(function (report) {
      var lost = 0, received = 0, loudest = null, level = 0.02, rtt = null;
      report.forEach(function (s) {
        if (s.type === "inbound-rtp") {
          lost += s.packetsLost || 0; received += s.packetsReceived || 0;
          if (s.kind === "audio" && s.audioLevel > level) {
            var slot = state.tracks.filter(function (t) { return t.mid === s.mid; })[0];
            if (slot) { loudest = slot.seat; level = s.audioLevel; }
          }
        }
        if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
      });
      var loss = received ? lost / (lost + received) : 0;
      $("quality").textContent = "网络：" + (loss > 0.05 || rtt > 0.4 ? "差" : loss > 0.01 || rtt > 0.2 ? "一般" : "好");
      Array.prototype.forEach.call(document.querySelectorAll(".tile"), function (t) {
        t.classList.toggle("speaking", loudest !== null && t.id === "tile-" + loudest);
      });
    });
  }, 1000);

  show("step-consent");
})();
