// 解纷 join page and in-room UI. Plain ES2017, no build step: it must run in WeChat's in-app
// browser as well as desktop Chrome/Edge/Firefox/Safari. The protocol is PROTOCOL.md.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var token = "";
  // A mangled link (a broken %-escape) must reach the "链接不完整" page, not stop the script.
  try { token = decodeURIComponent((location.hash || "").replace(/^#/, "")); } catch (e) { token = ""; }
  var state = { ws: null, pc: null, stream: null, seat: null, tracks: [], ended: false,
                joinMessage: null, retries: 0, moves: 0, presence: null, iceServers: [],
                link: null, part: 0, retryTimer: null, serverNotice: null, levels: {} };
  var SEAT_NAMES = { mediator: "调解员", applicant: "申请人", respondent: "被申请人",
                     interpreter: "翻译", applicant_agent: "申请人代理人", respondent_agent: "被申请人代理人" };
  var CLOSE_FINAL = { 4401: true, 4403: true, 4409: true, 4410: true };
  var CLOSE_MOVED = 4302;
  // Refusals of what the page itself sent wrong (English, for developers): logged, never shown.
  var QUIET_ERRORS = { malformed: true, too_large: true, unknown_type: true, invalid_field: true,
                       invalid_answer: true, invalid_candidate: true, already_joined: true };
  var STEPS = ["step-checking", "step-consent", "step-devices", "step-waiting", "step-room", "step-closed"];
  // Debug handle, read-only, for tests and support (the browser console): the live
  // RTCPeerConnection and signalling socket, the offer's track list (mid -> seat, kind,
  // direction), this page's seat, the link check's answer and the last audio level heard from
  // each seat. Nothing on the page reads it.
  window.jiefenRoom = {
    get pc() { return state.pc; },
    get ws() { return state.ws; },
    get tracks() { return state.tracks; },
    get seat() { return state.seat; },
    get link() { return state.link; },
    get levels() { return state.levels; }
  };

  function now() { return window.performance && performance.now ? performance.now() : Date.now(); }
  var currentStep = null;
  function show(step) {
    STEPS.forEach(function (id) { $(id).hidden = id !== step; });
    if (step !== currentStep) window.scrollTo(0, 0);  // not on every renegotiation
    currentStep = step;
  }
  function closed(title, message) {
    state.ended = true;
    clearTimeout(state.retryTimer);
    $("closed-title").textContent = title;
    $("closed-message").textContent = message;
    $("room-notice").hidden = true;
    stopMedia();
    show("step-closed");
  }
  function stopMedia() {
    if (state.pc) { state.pc.close(); state.pc = null; }
    if (state.stream) { state.stream.getTracks().forEach(function (t) { t.stop(); }); }
  }
  // A JSON POST; done(status, body) with status 0 when the request did not get through.
  function postJSON(url, payload, timeout, done) {
    var request = new XMLHttpRequest();
    request.open("POST", url);
    request.setRequestHeader("Content-Type", "application/json");
    request.timeout = timeout;
    request.onload = function () {
      var body = null;
      try { body = JSON.parse(request.responseText); } catch (e) { body = null; }
      done(request.status, body);
    };
    request.onerror = request.ontimeout = function () { done(0, null); };
    request.send(JSON.stringify(payload));
  }
  function refused(status, body) {
    return !!(body && body.message && (status === 400 || status === 403 || status === 410));
  }

  // -- 长者模式 --------------------------------------------------------------------------------
  // Kept across visits; a browser that refuses storage (some private modes throw) still works.
  var elder = false;
  try { elder = localStorage.getItem("jiefen-elder") === "1"; } catch (e) { elder = false; }
  function applyElder() {
    document.body.classList.toggle("elder", elder);
    $("elder-toggle").setAttribute("aria-pressed", String(elder));
    $("elder-toggle").textContent = elder ? "标准模式" : "长者模式";
    state.part = firstPart();
    renderConsent();
  }
  $("elder-toggle").onclick = function () {
    elder = !elder;
    try { localStorage.setItem("jiefen-elder", elder ? "1" : "0"); } catch (e) { /* this visit only */ }
    applyElder();
  };

  // -- 0. the link -------------------------------------------------------------------------------
  // Checked before anything is asked: a forged, expired or ended-room link is refused now, not
  // after the notices, the consents, the identity and the camera.
  var IDENTITY_PROMPTS = {
    id_last6: { label: "请输入您身份证号码的后 6 位", hint: "最后一位是 X 的，请输入 X。", inputmode: "text", maxlength: 18 },
    phone: { label: "请输入案件登记的手机号", hint: "就是您登记案件时留的手机号码。", inputmode: "tel", maxlength: 20 }
  };
  var checkTries = 0;
  function checkLink() {
    postJSON("/rooms/check", { token: token }, 8000, function (status, body) {
      if (status === 200 && body && body.seat) { linkChecked(body); return; }
      if (refused(status, body)) { closed("无法进入", body.message); return; }
      checkTries += 1;
      $("checking-message").textContent = (body && body.message) || "网络不太好，正在重试，请稍候……";
      setTimeout(checkLink, Math.min(8000, 1000 * checkTries));
    });
  }
  function linkChecked(link) {
    state.link = link;
    var greeting = $("greeting"), caseNo = document.createElement("span");
    greeting.textContent = "您好，" + link.name + "（" + (link.role_name || SEAT_NAMES[link.seat] || link.seat) + "），案件 ";
    caseNo.className = "nowrap"; caseNo.textContent = link.case_no;
    greeting.appendChild(caseNo);
    var prompt = link.identity ? IDENTITY_PROMPTS[link.identity] || { label: "请输入身份核验信息", hint: "", inputmode: "text", maxlength: 20 } : null;
    $("identity-box").hidden = !prompt;
    if (prompt) {
      $("identity-label").textContent = prompt.label;
      $("identity-hint").textContent = prompt.hint; $("identity-hint").hidden = !prompt.hint;
      $("identity").setAttribute("inputmode", prompt.inputmode);
      $("identity").maxLength = prompt.maxlength;
    }
    state.part = firstPart();
    renderConsent();
    show("step-consent");
  }
  function needsIdentity() { return !!(state.link && state.link.identity); }

  // -- 1. consent --------------------------------------------------------------------------------
  // 长者模式 shows one part at a time, each with one big button; the standard page shows all of
  // them at once. Either way the recording consent is its own explicit act (a tick, or the
  // 「同意录音录像」 button on a screen of its own), apart from having read the notices.
  function parts() {
    return Array.prototype.filter.call(document.querySelectorAll("#step-consent .part"), function (part) {
      return part.getAttribute("data-part") !== "identity" || needsIdentity();
    });
  }
  function firstPart() {
    var list = parts(), name;
    if (!$("ack-notices").checked) return 0;
    for (var i = 0; i < list.length; i++) {
      name = list[i].getAttribute("data-part");
      if (name === "consent" && !$("consent-recording").checked) return i;
      if (name === "identity") return i;
    }
    return list.length - 1;
  }
  function partNamed(name) {
    var list = parts();
    for (var i = 0; i < list.length; i++) if (list[i].getAttribute("data-part") === name) return i;
    return 0;
  }
  function renderConsent() {
    var list = parts();
    state.part = Math.max(0, Math.min(state.part, list.length - 1));
    Array.prototype.forEach.call(document.querySelectorAll("#step-consent .part"), function (part) {
      part.classList.toggle("current", part === list[state.part]);
    });
    var current = list[state.part] && list[state.part].getAttribute("data-part");
    $("to-devices").hidden = elder && current !== "identity";
  }
  function nextPart() {
    state.part += 1;
    if (state.part >= parts().length) { toDevices(); return; }
    $("consent-message").textContent = "";
    renderConsent();
    window.scrollTo(0, 0);
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-next]"), function (b) {
    b.onclick = function () {
      // The last notice read: that is what 「我已阅读并理解以上须知」 says.
      if (b.parentNode.getAttribute("data-part") === "notice-sham") $("ack-notices").checked = true;
      nextPart();
    };
  });
  // Reached only after the three notices (firstPart), whose last one ticked 「已阅读」.
  $("agree-recording").onclick = function () {
    $("consent-recording").checked = true;
    nextPart();
  };
  $("refuse-recording").onclick = function () {
    $("consent-recording").checked = false;
    consentMessage("不同意录音录像，就不能在线视频调解。您可以联系调解员，商量别的调解方式。");
  };
  function consentMessage(text) { $("consent-message").textContent = text; $("consent-message").className = "message error"; }
  // What the person typed, as the server compares it: full-width digits and letters made
  // ASCII, spaces and dashes dropped, x made X, a +86 dropped from a phone number.
  function identityAnswer() {
    var text = $("identity").value.replace(/[\uFF01-\uFF5E]/g, function (c) {
      return String.fromCharCode(c.charCodeAt(0) - 0xFEE0);
    }).replace(/[\s\-]/g, "").toUpperCase();
    var kind = state.link && state.link.identity;
    if (kind === "phone") text = text.replace(/^(\+86|0086)/, "");
    // The whole ID number typed: only its last 6 characters are asked for, and leave the page.
    if (kind === "id_last6" && /^[0-9]{17}[0-9X]$/.test(text)) text = text.slice(-6);
    return text;
  }
  function identityProblem(answer) {
    var kind = state.link && state.link.identity;
    if (!answer) return kind === "phone" ? "请输入案件登记的手机号。" : kind === "id_last6" ? "请输入身份证号码的后 6 位。" : "请输入身份核验信息。";
    if (kind === "id_last6" && !/^[0-9]{5}[0-9X]$/.test(answer)) return "请输入身份证号码的最后 6 位，例如 12345X。";
    if (kind === "phone" && !/^1[0-9]{10}$/.test(answer)) return "请输入 11 位手机号码。";
    return null;
  }
  function toDevices() {
    if (!$("ack-notices").checked || !$("consent-recording").checked) {
      state.part = firstPart(); renderConsent();
      consentMessage("请先阅读须知，并勾选同意录音录像。"); return;
    }
    if (needsIdentity()) {
      var problem = identityProblem(identityAnswer());
      if (problem) { state.part = partNamed("identity"); renderConsent(); consentMessage(problem); $("identity").focus(); return; }
    }
    $("consent-message").textContent = "";
    show("step-devices");
    checkDevices();
  }
  $("to-devices").onclick = toDevices;
  $("identity").onkeydown = function (event) { if (event.key === "Enter") toDevices(); };

  // -- 2. device check ---------------------------------------------------------------------------
  function deviceError(error, devices) {
    var name = error && error.name;
    if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError")
      return "没有得到使用摄像头和麦克风的允许。请在浏览器或微信的设置里允许后，刷新本页。";
    if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
      var has = {};
      (devices || []).forEach(function (d) { has[d.kind] = true; });
      if (devices && !has.videoinput && has.audioinput) return "没有找到摄像头。请换一台有摄像头的手机或电脑。";
      if (devices && !has.audioinput && has.videoinput) return "没有找到麦克风。请插上耳机或换一台手机再试。";
      return "没有找到摄像头或麦克风。请换一台有摄像头的手机或电脑。";
    }
    if (name === "NotReadableError" || name === "TrackStartError")
      return "摄像头或麦克风正被其他应用使用（例如正在通话），请关闭其他应用后点「重新检查」。";
    if (!navigator.mediaDevices) return "这个浏览器不能视频通话。请用微信或新版浏览器打开，并确认地址以 https 开头。";
    return "打开摄像头和麦克风时出错：" + (error && error.message ? error.message : name);
  }
  function deviceStatus(text, error) {
    $("device-status").textContent = text; $("device-status").className = "message" + (error ? " error" : "");
    // No camera, no picture and no level to show: only the message and what to do.
    $("preview").hidden = $("mic-check").hidden = error;
    if (error) $("device-retry").hidden = false;
  }
  function checkDevices() {
    // Back here after a refused identity: release the camera first (phones cannot open it twice).
    meterRun += 1;
    $("enter").disabled = true;
    $("device-retry").hidden = true;
    deviceStatus("正在打开摄像头和麦克风……", false);
    if (state.stream) { state.stream.getTracks().forEach(function (t) { t.stop(); }); state.stream = null; }
    checkNetwork();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) { deviceStatus(deviceError(null), true); return; }
    navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480, frameRate: 30 } })
      .then(function (stream) {
        state.stream = stream;
        $("preview").srcObject = stream;
        deviceStatus("摄像头和麦克风正常。", false);
        meter(stream);
        $("enter").disabled = false;
      })
      .catch(function (error) {
        // Which device is missing, where the browser can tell without a permission.
        var list = navigator.mediaDevices.enumerateDevices ? navigator.mediaDevices.enumerateDevices() : Promise.reject(null);
        list.then(function (devices) { deviceStatus(deviceError(error, devices), true); },
                  function () { deviceStatus(deviceError(error, null), true); });
      });
  }
  $("device-retry").onclick = checkDevices;
  // The network, for real: a few small requests to this server, one after another, within
  // NETWORK_CHECK_MS. Their round trip (the median, the first one left out: it may include
  // setting up the connection) and how many got through give 良好 / 一般 / 较差.
  var NETWORK_CHECK_MS = 1800, NETWORK_PINGS = 4;
  var networkRun = 0;
  function checkNetwork() {
    var run = ++networkRun, started = now(), times = [], failures = 0, sent = 0;
    var status = $("network-status");
    status.textContent = "正在检查网络……"; status.className = "message";
    if (navigator.onLine === false) { report(); return; }
    ping();
    function ping() {
      var left = NETWORK_CHECK_MS - (now() - started);
      if (sent >= NETWORK_PINGS || left < 100) { report(); return; }
      sent += 1;
      var request = new XMLHttpRequest(), t0 = now();
      request.open("GET", "/rooms/ping?n=" + sent + "-" + Date.now());
      request.timeout = Math.min(1000, left);
      request.onload = function () {
        if (request.status >= 200 && request.status < 300) times.push(now() - t0); else failures += 1;
        ping();
      };
      request.onerror = request.ontimeout = function () { failures += 1; ping(); };
      request.send();
    }
    function report() {
      if (run !== networkRun) return;  // a newer check has started
      if (!times.length) {
        status.textContent = navigator.onLine === false ? "网络断开了。请打开 Wi-Fi 或移动数据，然后点「重新检查」。"
          : "连不上调解服务器。请检查网络（Wi-Fi 或移动数据），然后点「重新检查」。";
        status.className = "message error"; $("device-retry").hidden = false;
        return;
      }
      var sample = times.length > 1 ? times.slice(1) : times;
      sample.sort(function (a, b) { return a - b; });
      var rtt = Math.round(sample[Math.floor(sample.length / 2)]), grade;
      if (rtt < 150 && !failures) grade = "网络良好";
      else if (rtt < 400 && failures <= 1) grade = "网络一般";
      else grade = "网络较差";
      status.textContent = grade + "（往返 " + rtt + " 毫秒" + (failures ? "，" + failures + " 次没有响应" : "") + "）" +
        (grade === "网络一般" ? "，视频可能偶尔卡顿。" : grade === "网络较差" ? "，视频可能会卡。请换到信号好的地方，或连上 Wi-Fi。" : "。");
      status.className = "message" + (grade === "网络较差" ? " error" : "");
      if (grade === "网络较差") $("device-retry").hidden = false;
    }
  }
  // The level meter of the device check; a newer one (重新检查) or leaving the step ends it
  // and its audio context (phones allow only a few).
  var meterRun = 0;
  function meter(stream) {
    var AudioContext = window.AudioContext || window.webkitAudioContext;
    if (!AudioContext) return;
    var run = ++meterRun;
    var context = new AudioContext(), analyser = context.createAnalyser(), data = new Uint8Array(256);
    context.createMediaStreamSource(stream).connect(analyser);
    (function tick() {
      if (run !== meterRun || $("step-devices").hidden) { context.close(); return; }
      analyser.getByteTimeDomainData(data);
      var peak = 0; for (var i = 0; i < data.length; i++) peak = Math.max(peak, Math.abs(data[i] - 128));
      $("mic-level").style.width = Math.min(100, peak * 1.6) + "%";
      requestAnimationFrame(tick);
    })();
  }
  $("speaker-test").onclick = function () {
    var AudioContext = window.AudioContext || window.webkitAudioContext;
    if (!AudioContext) return;
    var context = new AudioContext(), osc = context.createOscillator();
    osc.frequency.value = 660; osc.connect(context.destination); osc.start(); osc.stop(context.currentTime + 0.6);
    osc.onended = function () { context.close(); };
  };
  $("enter").onclick = function () {
    state.joinMessage = { type: "join", token: token, identity: needsIdentity() ? identityAnswer() : null,
                          consent_recording: true, acknowledged_notices: true };
    show("step-waiting");
    connect();
  };

  // -- 3. signalling -----------------------------------------------------------------------------
  function send(message) { if (state.ws && state.ws.readyState === 1) state.ws.send(JSON.stringify(message)); }
  // Every (re)connection first asks which media process hosts the room: after a drop it may
  // be another one (the first went down, or the room moved). A refusal there is final.
  function connect() {
    clearTimeout(state.retryTimer); state.retryTimer = null;
    postJSON("/rooms/placement", { token: token }, 10000, function (status, body) {
      if (state.ended) return;
      if (status === 200 && body && body.signalling_url) { openSocket(body.signalling_url); return; }
      if (refused(status, body)) { closed("无法进入", body.message); return; }
      retryLater(body && body.message);
    });
  }
  function retryLater(message) {
    if (state.ended) return;
    state.retries += 1;
    connectionNotice(message || (navigator.onLine === false ? "网络断开了，恢复后会自动重新连接……" : "网络中断，正在重新连接……"));
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, Math.min(10000, 1000 * state.retries));
  }
  // Back online while waiting to retry: retry now rather than at the end of the back-off.
  // A blip the socket lived through needs no reconnect: only the notice goes.
  window.addEventListener("online", function () {
    if (state.retryTimer) connect();
    else if (state.ws && state.ws.readyState === 1) connectionRestored();
  });
  window.addEventListener("offline", function () {
    if (state.joinMessage && !state.ended) connectionNotice("网络断开了，恢复后会自动重新连接……");
  });
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
      state.ws = null;
      // The network dropped, or the room moved to another media process (CLOSE_MOVED):
      // reconnect with the same join; an admitted seat goes straight back in.
      // The first move is followed at once; repeated ones back off like any other retry.
      if (event.code === CLOSE_MOVED && state.moves++ === 0) {
        connectionNotice("正在为您切换视频线路，请稍候……");
        clearTimeout(state.retryTimer); state.retryTimer = setTimeout(connect, 300);
        return;
      }
      retryLater(null);
    };
  }
  // The socket and the peer connection are given up on together, and the page reconnects.
  function reconnect() {
    var old = state.ws; state.ws = null;
    if (old) old.close();
    retryLater(null);
  }
  function handle(message) {
    switch (message.type) {
      case "welcome":
        state.seat = message.seat; state.retries = 0; state.moves = 0; state.iceServers = message.ice_servers || [];
        $("mediator-panel").hidden = message.seat !== "mediator";
        break;
      case "waiting":
        $("waiting-message").textContent = message.message; show("step-waiting"); connectionRestored();
        sendMediaState();  // the mediator sees this device's switches from the waiting room on
        break;
      case "admitted": break;
      case "offer": answer(message); break;
      case "presence": state.presence = message; renderPresence(); break;
      case "notice": notice(message.message); break;
      case "chat": chatLine(message.seat, message.text); break;
      case "seat_opened": showInvite(message); break;
      case "replaced": closed("已在其他设备进入", message.message); break;
      case "moved": connectionNotice(message.message); break;
      case "removed": closed("已离开调解室", message.message); break;
      case "denied": closed("暂未获准进入", message.message); break;
      case "ended": closed("调解已结束", message.message); break;
      case "error":
        if (message.code === "moved") break;  // the socket closes with CLOSE_MOVED: see onclose
        if (!$("step-consent").hidden || !$("step-waiting").hidden) {
          if (message.code === "identity_mismatch" || message.code === "identity_required" ||
              message.code === "consent_required") {
            state.part = message.code === "consent_required" ? firstPart() : partNamed("identity");
            renderConsent();
            show("step-consent");
            consentMessage(message.message);
            if (state.ws) { var old = state.ws; state.ws = null; old.close(); }
            return;
          }
          closed("无法进入", message.message);
        } else if (INVITE_ERRORS[message.code]) inviteMessage(message.message, true);
        else if (QUIET_ERRORS[message.code]) { if (window.console) console.warn("refused:", message.code, message.message); }
        else notice(message.message);
        break;
    }
  }

  // -- 4. media ----------------------------------------------------------------------------------
  // Offers are answered one at a time, in order: a renegotiation (a seat was opened) must not
  // overtake the offer that created the connection it renegotiates.
  var negotiation = Promise.resolve();
  var DISCONNECTED_GRACE_MS = 6000;
  function answer(offer) {
    negotiation = negotiation.then(function () { return negotiate(offer); })
      .catch(function (error) { if (window.console) console.error("offer failed", error); });
  }
  function slotOf(mid) { return state.tracks.filter(function (t) { return t.mid === mid; })[0]; }
  function newPeerConnection() {
    if (state.pc) state.pc.close();
    var pc = new RTCPeerConnection({ iceServers: state.iceServers, bundlePolicy: "max-bundle" });
    var stalled = null;
    state.pc = pc;
    pc.onicecandidate = function (event) {
      if (event.candidate) send({ type: "ice", candidate: event.candidate.candidate, sdpMid: event.candidate.sdpMid });
    };
    // Media gone for good (the media process or its host died without closing the socket, which
    // can then look open for minutes), or gone for a while (the phone lost its network: the
    // browser takes ~30 s to call that "failed"): give that socket up and reconnect through
    // placement. A short blip (disconnected, then connected again) is left to ICE.
    pc.onconnectionstatechange = function () {
      if (pc !== state.pc || state.ended) return;
      clearTimeout(stalled);
      if (pc.connectionState === "failed") reconnect();
      else if (pc.connectionState === "disconnected") {
        stalled = setTimeout(function () {
          if (pc === state.pc && pc.connectionState === "disconnected" && !state.ended) reconnect();
        }, DISCONNECTED_GRACE_MS);
      }
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
          var local = localTrack(slot.kind);
          transceiver.direction = "sendonly";
          if (local && transceiver.sender.track !== local) transceiver.sender.replaceTrack(local);
        } else transceiver.direction = "recvonly";
      });
      return pc.createAnswer();
    }).then(function (description) { return pc.setLocalDescription(description); })
      .then(function () {
        send({ type: "answer", sdp: pc.localDescription.sdp });
        show("step-room");
        connectionRestored();
        renderPresence();
        sendMediaState();  // the server forgets it with the connection
      });
  }
  function localTrack(kind) {
    return state.stream ? state.stream.getTracks().filter(function (t) { return t.kind === kind; })[0] : null;
  }
  // Own tile last: on a phone it is the small picture in the corner (room.css).
  var TILE_ORDER = ["mediator", "applicant", "respondent", "interpreter", "applicant_agent", "respondent_agent"];
  function tile(seat) {
    var id = "tile-" + seat, element = $(id);
    if (element) return element;
    element = document.createElement("div"); element.id = id; element.className = "tile";
    element.innerHTML = '<video autoplay playsinline></video><span class="label"></span><span class="flags"></span>';
    element.querySelector(".label").textContent = SEAT_NAMES[seat] || seat;
    if (seat === state.seat) {
      element.classList.add("self");
      element.querySelector(".label").textContent = "我";
      element.querySelector("video").muted = true; element.querySelector("video").srcObject = state.stream;
    }
    element.style.order = seat === state.seat ? 99 : Math.max(0, TILE_ORDER.indexOf(seat));
    $("tiles").appendChild(element);
    return element;
  }
  // Notices: the server's (caucus, muted by the mediator) stay until the next one; the page's
  // own about the connection ("reconnecting") only while that lasts, the server's shown again after.
  function notice(text) { state.serverNotice = text; showNotice(text); }
  function connectionNotice(text) { showNotice(text); }
  function connectionRestored() {
    if (state.serverNotice) showNotice(state.serverNotice); else $("room-notice").hidden = true;
  }
  function showNotice(text) { var n = $("room-notice"); n.textContent = text; n.hidden = false; }
  function chatLine(seat, text) {
    var line = document.createElement("div"); line.textContent = (SEAT_NAMES[seat] || seat) + "：" + text;
    $("chat-log").appendChild(line); $("chat-log").scrollTop = 1e6;
  }
  $("chat-form").onsubmit = function (event) {
    event.preventDefault(); var text = $("chat-text").value.trim();
    if (text) send({ type: "chat", text: text }); $("chat-text").value = "";
  };
  $("toggle-mic").onclick = function () { toggle("audio"); };
  $("toggle-camera").onclick = function () { toggle("video"); };
  function toggle(kind) {
    var track = localTrack(kind);
    if (!track) return;
    track.enabled = !track.enabled;
    if (kind === "audio" && !track.enabled) tile(state.seat).classList.remove("speaking");
    renderToggles();
    renderPresence();
    sendMediaState();
  }
  // What this page sends: the server shows it on the others' tiles (presence audio_off/video_off).
  function sendMediaState() {
    var audio = localTrack("audio"), video = localTrack("video");
    send({ type: "media_state", audio: !!(audio && audio.enabled), video: !!(video && video.enabled) });
  }
  function me() {
    var p = state.presence;
    return p ? p.participants.filter(function (person) { return person.seat === state.seat; })[0] : null;
  }
  function renderToggles() {
    var audio = localTrack("audio"), video = localTrack("video"), self = me();
    var micOn = !!(audio && audio.enabled), cameraOn = !!(video && video.enabled);
    var mutedByMediator = !!(self && self.muted);
    var mic = $("toggle-mic"), camera = $("toggle-camera");
    // Muted by the mediator: the server forwards nothing whatever this page does, so the
    // button says so instead of offering what would not work.
    mic.textContent = mutedByMediator ? "调解员已将您静音" : (micOn ? "关闭麦克风" : "打开麦克风");
    mic.disabled = mutedByMediator;
    mic.classList.toggle("off", mutedByMediator || !micOn);
    mic.setAttribute("aria-pressed", String(!micOn));
    camera.textContent = cameraOn ? "关闭摄像头" : "打开摄像头";
    camera.classList.toggle("off", !cameraOn);
    camera.setAttribute("aria-pressed", String(!cameraOn));
  }

  // -- presence, mediator controls -----------------------------------------------------------
  function flagsOf(person) {
    var flags = [];
    if (!person.present) flags.push("未进入");
    else if (person.waiting) flags.push("在等候室");
    else if (person.on_hold) flags.push("等候中");
    if (person.muted) flags.push("被调解员静音");
    else if (person.audio_off) flags.push("已关闭麦克风");
    if (person.video_off) flags.push("已关闭摄像头");
    return flags;
  }
  // 申请人 张三; a seat whose name is its role (a mediator left as 调解员) once, not twice.
  function who(person) {
    return person.name && person.name !== person.role_name ? person.role_name + " " + person.name : person.role_name;
  }
  function setFlags(element, flags) {
    var box = element.querySelector(".flags");
    box.textContent = "";
    flags.forEach(function (text) { var f = document.createElement("span"); f.textContent = text; box.appendChild(f); });
  }
  function renderPresence() {
    var p = state.presence;
    if (!p || !state.seat) return;
    var own = tile(state.seat), audio = localTrack("audio"), video = localTrack("video");
    var self = me(), ownFlags = [];
    if (self && self.muted) ownFlags.push("被调解员静音"); else if (audio && !audio.enabled) ownFlags.push("已关闭麦克风");
    if (video && !video.enabled) ownFlags.push("已关闭摄像头");
    setFlags(own, ownFlags);
    own.classList.toggle("video-off", !!(video && !video.enabled));
    renderToggles();
    p.participants.forEach(function (person) {
      if (person.seat === state.seat) return;
      var element = tile(person.seat);
      element.classList.toggle("absent", !person.present || !person.admitted || person.on_hold);
      element.classList.toggle("video-off", !!person.video_off);
      element.querySelector(".label").textContent = who(person);
      setFlags(element, flagsOf(person));
    });
    if (state.seat !== "mediator") return;
    renderInvite(p.participants);
    var waiting = $("waiting-list"), list = $("participant-list");
    waiting.innerHTML = ""; list.innerHTML = "";
    p.participants.forEach(function (person) {
      if (person.seat === "mediator") return;
      var row = document.createElement("div"); row.className = "row";
      var label = document.createElement("span"); label.textContent = who(person) + " ";
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
  // Sampled each second from the peer connection's stats, over what changed since the last
  // sample (a long call's totals would hide a bad minute). Loudness is the RMS level over that
  // second (totalAudioEnergy / totalSamplesDuration), not the instantaneous audioLevel, which a
  // once-a-second sample would mostly miss between words.
  var SPEAKING_LEVEL = 0.02, QUALITY_WINDOW = 3;
  var last = { pc: null, stats: {}, window: [] };
  function midOfTrack(pc) {
    var mids = {};
    pc.getTransceivers().forEach(function (t) { if (t.receiver && t.receiver.track) mids[t.receiver.track.id] = t.mid; });
    return mids;
  }
  function sampleStats() {
    var pc = state.pc;
    if (!pc || pc.signalingState === "closed") { quality("—", ""); return; }
    if (last.pc !== pc) last = { pc: pc, stats: {}, window: [] };
    pc.getStats().then(function (report) {
      if (last.pc !== pc) return;
      var lost = 0, received = 0, rtt = null, loudest = null, best = SPEAKING_LEVEL, mids = null, levels = {};
      report.forEach(function (s) {
        var before = last.stats[s.id] || {}, level;
        if (s.type === "inbound-rtp") {
          lost += Math.max(0, (s.packetsLost || 0) - (before.lost || 0));
          received += Math.max(0, (s.packetsReceived || 0) - (before.received || 0));
          if (s.kind === "audio") {
            if (s.mid === undefined && !mids) mids = midOfTrack(pc);
            var slot = slotOf(s.mid !== undefined ? s.mid : mids[s.trackIdentifier]);
            level = loudness(s, before);
            if (slot) { levels[slot.seat] = level; if (level > best) { loudest = slot.seat; best = level; } }
          }
          last.stats[s.id] = { lost: s.packetsLost || 0, received: s.packetsReceived || 0,
                               energy: s.totalAudioEnergy, duration: s.totalSamplesDuration };
        } else if (s.type === "media-source" && s.kind === "audio") {
          // This page's own microphone: highlighted too when it is on and heard.
          var mic = localTrack("audio"), self = me();
          level = loudness(s, before);
          if (mic && mic.enabled && !(self && self.muted) && state.seat) {
            levels[state.seat] = level;
            if (level > best) { loudest = state.seat; best = level; }
          }
          last.stats[s.id] = { energy: s.totalAudioEnergy, duration: s.totalSamplesDuration };
        } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" &&
                   s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
      });
      state.levels = levels;
      last.window.push({ lost: lost, received: received });
      if (last.window.length > QUALITY_WINDOW) last.window.shift();
      var windowLost = 0, windowReceived = 0;
      last.window.forEach(function (w) { windowLost += w.lost; windowReceived += w.received; });
      var loss = windowLost + windowReceived ? windowLost / (windowLost + windowReceived) : 0;
      if (pc.connectionState === "disconnected" || pc.connectionState === "failed") quality("已断开", "poor");
      else if (!windowReceived && rtt === null) quality("—", "");
      else if (loss > 0.05 || rtt > 0.4) quality("差", "poor");
      else if (loss > 0.01 || rtt > 0.2) quality("一般", "fair");
      else quality("好", "good");
      Array.prototype.forEach.call(document.querySelectorAll(".tile"), function (t) {
        t.classList.toggle("speaking", loudest !== null && t.id === "tile-" + loudest);
      });
    }, function () { /* the connection closed meanwhile */ });
  }
  function loudness(s, before) {
    if (s.totalAudioEnergy === undefined || before.energy === undefined) return 0;
    var energy = s.totalAudioEnergy - before.energy, duration = s.totalSamplesDuration - before.duration;
    return duration > 0 && energy > 0 ? Math.sqrt(energy / duration) : 0;
  }
  function quality(text, grade) {
    var q = $("quality");
    q.textContent = "网络：" + text;
    q.className = grade;
  }
  setInterval(sampleStats, 1000);

  applyElder();
  if (!token) { closed("链接不完整", "请点开调解员发给您的完整链接。"); return; }
  show("step-checking");
  checkLink();
})();
