"""H.264 rooms: the SPS parser, keyframes, the recorder's Matroska files, and a three-party room.

The room test runs real aiortc peers that send pre-encoded constrained-baseline H.264 (as
aiortc offers it) through ``RoomMedia``. A kill in the middle of an H.264 recording is tested
in test_room_kill.py, its court copy in test_court_copy.py, finalising and verifying it in
test_recording_finalise.py.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import av
import pytest

from mediation_rooms import h264
from mediation_rooms.forwarding import ForwardedFrame, is_keyframe
from mediation_rooms.media_session import MediaConfig, RoomMedia
from mediation_rooms.recording import (
    CLUSTER_MS,
    RoomClock,
    TrackFile,
    TrackRecorder,
    h264_dimensions,
)
from mediation_rooms.room import BASE_SEATS, SessionView
from mediation_rooms.synthetic_peer import synthetic_clip
from tests.test_media_forwarding import Room, until

MEDIATOR, APPLICANT, RESPONDENT = BASE_SEATS
#: Not a whole number of macroblocks high, so the SPS crops (320x192 coded).
WIDTH, HEIGHT = 320, 180


# -- a Matroska header, read without FFmpeg --------------------------------------------------

#: Master elements on the way to a track's video settings: Segment, Tracks, TrackEntry, Video.
_MASTERS = {0x18538067, 0x1654AE6B, 0xAE, 0xE0}
PIXEL_WIDTH, PIXEL_HEIGHT, CODEC_ID, CODEC_PRIVATE = 0xB0, 0xBA, 0x86, 0x63A2


def _vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int]:
    """(value, position after) of the EBML variable-size integer at ``pos``."""
    length = 9 - data[pos].bit_length()
    value = int.from_bytes(data[pos : pos + length], "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
        if value == (1 << (7 * length)) - 1:
            value = len(data)  # "unknown size": runs to the end
    return value, pos + length


def _matroska_track(path: Path) -> dict[int, bytes]:
    """The first track's elements (its Video element's children included), by element ID."""
    data = path.read_bytes()
    found: dict[int, bytes] = {}

    def walk(start: int, end: int) -> None:
        pos = start
        while pos < end:
            element, pos = _vint(data, pos, keep_marker=True)
            size, pos = _vint(data, pos, keep_marker=False)
            stop = min(pos + size, end)
            if element in _MASTERS:
                walk(pos, stop)
            else:
                found.setdefault(element, data[pos:stop])
            pos = stop

    walk(0, len(data))
    return found


def _length_prefixed_nals(packet: bytes) -> list[bytes]:
    nals, pos = [], 0
    while pos < len(packet):
        size = int.from_bytes(packet[pos : pos + 4], "big")
        nals.append(packet[pos + 4 : pos + 4 + size])
        pos += 4 + size
    assert pos == len(packet)
    return nals


# -- the SPS parser ------------------------------------------------------------------------


def _encode_one(size: tuple[int, int], pix_fmt: str, options: dict[str, str]) -> bytes:
    width, height = size
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, pix_fmt
    encoder.time_base = Fraction(1, 30)
    encoder.options = {"preset": "ultrafast", "threads": "1", **options}
    frame = av.VideoFrame(width, height, pix_fmt)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.pts = 0
    return b"".join(bytes(packet) for packet in [*encoder.encode(frame), *encoder.encode(None)])


def _decoded_size(access_unit: bytes) -> tuple[int, int]:
    decoder = av.CodecContext.create("h264", "r")
    frames = [*decoder.decode(av.Packet(access_unit)), *decoder.decode(None)]
    return frames[0].width, frames[0].height


@pytest.mark.parametrize(
    ("size", "pix_fmt", "options", "profile_idc", "chroma_format_idc", "frame_mbs_only"),
    [
        pytest.param((320, 240), "yuv420p", {"profile": "baseline"}, 66, 1, True, id="baseline"),
        pytest.param((322, 182), "yuv420p", {"profile": "baseline"}, 66, 1, True, id="cropped"),
        pytest.param((320, 180), "yuv420p", {"preset": "veryfast"}, 100, 1, True, id="high"),
        pytest.param((321, 241), "gray", {}, 100, 0, True, id="high-monochrome"),
        pytest.param((320, 241), "yuv422p", {}, 122, 2, True, id="high-422"),
        pytest.param((321, 241), "yuv444p", {}, 244, 3, True, id="high-444"),
        pytest.param(
            (320, 180), "yuv420p", {"x264-params": "interlaced=1"}, 77, 1, False, id="interlaced"
        ),
    ],
)
def test_the_sps_gives_the_size_the_decoder_shows(
    size: tuple[int, int],
    pix_fmt: str,
    options: dict[str, str],
    profile_idc: int,
    chroma_format_idc: int,
    frame_mbs_only: bool,
) -> None:
    access_unit = _encode_one(size, pix_fmt, options)
    found = h264.parameter_sets(access_unit)
    assert found is not None
    sps = h264.SequenceParameterSet.parse(found[0])
    assert (sps.profile_idc, sps.chroma_format_idc, sps.frame_mbs_only) == (
        profile_idc,
        chroma_format_idc,
        frame_mbs_only,
    )
    assert (sps.width, sps.height) == size == _decoded_size(access_unit)
    assert h264_dimensions(access_unit) == size


class _BitWriter:
    """Writes an SPS as the encoder would: bits, Exp-Golomb codes, then emulation prevention."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, count: int, value: int) -> None:
        self.bits += [(value >> shift) & 1 for shift in range(count - 1, -1, -1)]

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self, header: int) -> bytes:
        bits = [*self.bits, 1]  # rbsp_stop_one_bit, then zeros to a byte
        bits += [0] * (-len(bits) % 8)
        rbsp = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
        out, zeros = bytearray([header]), 0
        for byte in rbsp:
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def _crafted_sps(width_mbs: int, height_mbs: int, crop_bottom: int) -> tuple[bytes, int]:
    """A High-profile SPS with what x264 never writes: scaling lists (one 4x4 list that says
    "use the default", one explicit 8x8 list), picture order count type 1 with long offsets
    (their runs of zero bits need emulation prevention bytes), and the cropping after them.
    Otherwise as x264's baseline SPS (frame_num bits, frames only), so x264's slices decode
    with it. Returns the NAL unit and the RBSP bit at which its cropping ends."""
    writer = _BitWriter()
    writer.u(8, 100)  # profile_idc: High
    writer.u(8, 0)  # constraint flags
    writer.u(8, 30)  # level_idc
    writer.ue(0)  # seq_parameter_set_id
    writer.ue(1)  # chroma_format_idc: 4:2:0
    writer.ue(0)  # bit_depth_luma_minus8
    writer.ue(0)  # bit_depth_chroma_minus8
    writer.u(1, 0)  # qpprime_y_zero_transform_bypass_flag
    writer.u(1, 1)  # seq_scaling_matrix_present_flag
    for index in range(8):
        present = index in (0, 6)
        writer.u(1, int(present))
        if index == 0:
            writer.se(-8)  # next_scale 0 at once: useDefaultScalingMatrixFlag
        elif index == 6:
            for step in range(64):
                writer.se(1 if step % 2 else -1)
    writer.ue(0)  # log2_max_frame_num_minus4 (as x264's slices assume)
    writer.ue(1)  # pic_order_cnt_type
    writer.u(1, 1)  # delta_pic_order_always_zero_flag (no POC fields in the slice header)
    # offset_for_non_ref_pic, offset_for_top_to_bottom_field: 2**20 ends in 21 zero bits and
    # the next one starts with 21, a run that needs emulation prevention wherever it falls.
    writer.se(1 << 20)
    writer.se(1 << 20)
    writer.ue(2)  # num_ref_frames_in_pic_order_cnt_cycle
    writer.se(-70000)  # offset_for_ref_frame[0]
    writer.se(1)  # offset_for_ref_frame[1]
    writer.ue(1)  # max_num_ref_frames
    writer.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    writer.ue(width_mbs - 1)
    writer.ue(height_mbs - 1)
    writer.u(1, 1)  # frame_mbs_only_flag
    writer.u(1, 1)  # direct_8x8_inference_flag
    writer.u(1, 1)  # frame_cropping_flag
    for offset in (0, 0, 0, crop_bottom):
        writer.ue(offset)
    cropping_ends = len(writer.bits)
    writer.u(1, 0)  # vui_parameters_present_flag
    return writer.nal(0x67), cropping_ends


def test_scaling_lists_poc_type_1_and_emulation_prevention_are_read_through() -> None:
    access_unit = _encode_one((WIDTH, HEIGHT), "yuv420p", {"profile": "baseline"})
    nals = list(h264.nal_units(access_unit))
    crafted, cropping_ends = _crafted_sps(WIDTH // 16, 12, (192 - HEIGHT) // 2)
    # An emulation prevention byte sits among the fields read (byte 0 is the NAL header).
    assert (crafted.index(b"\x00\x00\x03") + 2 - 1) * 8 < cropping_ends
    sps = h264.SequenceParameterSet.parse(crafted)
    assert (sps.profile_idc, sps.level_idc, sps.width, sps.height) == (100, 30, WIDTH, HEIGHT)
    # FFmpeg reads the crafted SPS the same way: x264's own slices decode with it in place.
    swapped = b"".join(
        b"\x00\x00\x00\x01" + (crafted if h264.nal_type(nal) == h264.NAL_SPS else nal)
        for nal in nals
    )
    assert _decoded_size(swapped) == (WIDTH, HEIGHT)


def test_what_is_not_an_sps_is_refused() -> None:
    access_unit = _encode_one((WIDTH, HEIGHT), "yuv420p", {"profile": "baseline"})
    found = h264.parameter_sets(access_unit)
    assert found is not None
    sps, pps = found
    with pytest.raises(ValueError, match="not an SPS"):
        h264.SequenceParameterSet.parse(pps)
    with pytest.raises(ValueError, match="not an SPS"):
        h264.SequenceParameterSet.parse(b"")
    with pytest.raises(ValueError, match="ends early"):
        h264.SequenceParameterSet.parse(sps[:6])
    with pytest.raises(ValueError, match="too long"):
        h264.SequenceParameterSet.parse(sps[:4] + b"\x00" * 8 + b"\x01")
    assert h264_dimensions(b"\x00\x00\x00\x01" + sps[:6]) is None
    assert h264_dimensions(b"\x00\x00\x00\x01" + pps) is None


# -- keyframes -------------------------------------------------------------------------------


def test_h264_keyframes_are_the_access_units_that_open_with_an_idr_or_parameter_sets() -> None:
    clip = synthetic_clip(WIDTH, HEIGHT, codec="H264")
    flags = [keyframe for _, keyframe in clip.video]
    assert flags == [index % 30 == 0 for index in range(60)]  # one a second, as asked for
    assert [is_keyframe("H264", data) for data, _ in clip.video] == flags
    # aiortc writes four-byte start codes; three-byte ones (x264 uses both) read the same.
    short = [data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01") for data, _ in clip.video]
    assert [is_keyframe("H264", data) for data in short] == flags
    idr = clip.video[0][0]
    types = [h264.nal_type(nal) for nal in h264.nal_units(idr)]
    assert types[:2] == [h264.NAL_SPS, h264.NAL_PPS] and types[-1] == h264.NAL_IDR
    by_type = {h264.nal_type(nal): nal for nal in h264.nal_units(idr)}
    start = b"\x00\x00\x00\x01"
    assert is_keyframe("H264", start + by_type[h264.NAL_IDR])  # an IDR without its SPS/PPS
    only_parameter_sets = start + by_type[h264.NAL_SPS] + start + by_type[h264.NAL_PPS]
    assert is_keyframe("H264", only_parameter_sets)
    assert h264.parameter_sets(only_parameter_sets) is not None
    assert h264.parameter_sets(start + by_type[h264.NAL_IDR]) is None
    assert not is_keyframe("H264", start + by_type[6])  # an SEI alone
    assert not is_keyframe("H264", clip.video[1][0]) and not is_keyframe("H264", b"")
    assert h264.parameter_sets(clip.video[1][0]) is None


# -- the recorder ----------------------------------------------------------------------------


def test_h264_is_recorded_into_matroska_packet_for_packet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clip = synthetic_clip(WIDTH, HEIGHT, codec="H264")
    idr, _ = clip.video[0]
    found = h264.parameter_sets(idr)
    assert found is not None
    sps, pps = found
    bare_idr = b"".join(
        b"\x00\x00\x00\x01" + nal
        for nal in h264.nal_units(idr)
        if h264.nal_type(nal) not in (h264.NAL_SPS, h264.NAL_PPS)
    )
    # Delta frames, then a keyframe without parameter sets (the file cannot start on either),
    # then the clip twice over from its first keyframe.
    sent = [*clip.video[40:], (bare_idr, True), *clip.video[1:30], *clip.video, *clip.video]
    first_recorded = 20 + 1 + 29
    path = tmp_path / "applicant-video-01.mkv"
    clock = RoomClock()
    recorder = TrackRecorder(
        clock, TrackFile("applicant", "video", 1, path, "H264"), "H264", 90_000
    )
    arrival = time.monotonic()
    snapshot = tmp_path / "killed.mkv"
    for index, (data, keyframe) in enumerate(sent):
        recorder.write(ForwardedFrame(data, index * 3000, Fraction(1, 90_000), keyframe, arrival))
        if index == first_recorded + 89:
            shutil.copy(path, snapshot)  # what a SIGKILL now would leave: 90 frames written
    recorder.close()
    assert recorder.info.frames == len(sent) - first_recorded == 120
    assert [r.getMessage() for r in caplog.records] == [
        f"recording {path}: keyframe without SPS/PPS, waiting"
    ]
    assert recorder.info.write_errors == 0

    track = _matroska_track(path)
    assert track[CODEC_ID] == b"V_MPEG4/ISO/AVC"
    assert int.from_bytes(track[PIXEL_WIDTH], "big") == WIDTH
    assert int.from_bytes(track[PIXEL_HEIGHT], "big") == HEIGHT
    # CodecPrivate is the avcC of the first frame's own SPS and PPS (ISO/IEC 14496-15 5.3.3).
    assert track[CODEC_PRIVATE] == (
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1])
        + len(sps).to_bytes(2, "big")
        + sps
        + b"\x01"
        + len(pps).to_bytes(2, "big")
        + pps
    )
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        packets = [packet for packet in container.demux(stream) if packet.size]
        # Codec copy: each block holds the NAL units that were sent, only length-prefixed.
        assert [_length_prefixed_nals(bytes(p)) for p in packets] == [
            list(h264.nal_units(data)) for data, _ in sent[first_recorded:]
        ]
        assert [p.is_keyframe for p in packets] == [k for _, k in sent[first_recorded:]]
        assert [p.pts for p in packets] == sorted(p.pts for p in packets)
    with av.open(str(path)) as container:
        pictures = list(container.decode(video=0))
    assert len(pictures) == 120
    assert {(picture.width, picture.height) for picture in pictures} == {(WIDTH, HEIGHT)}

    # The file as a kill would have left it: all but the last cluster decodes.
    with av.open(str(snapshot)) as container:
        survived = sum(1 for _ in container.decode(video=0))
    assert 90 - CLUSTER_MS * 30 // 1000 - 1 <= survived <= 90


# -- a three-party H.264 room ------------------------------------------------------------------


@pytest.fixture
async def h264_room(tmp_path: Path) -> AsyncIterator[Room]:
    media = RoomMedia("room-h264", BASE_SEATS, MediaConfig(video_codec="H264"), tmp_path)
    room = Room(media, {}, tmp_path / "room-h264", synthetic_clip(WIDTH, HEIGHT, codec="H264"))
    try:
        yield room
    finally:
        await media.close()
        for peer in room.peers.values():
            await peer.close()


async def test_an_h264_room_records_every_seat_into_matroska(h264_room: Room) -> None:
    room = h264_room
    for seat in BASE_SEATS:
        await room.join(seat)
    room.media.start_recording(time.time())
    room.media.update_view(SessionView(admitted=set(BASE_SEATS)))
    await until(lambda: all(p.frames_received >= 60 for p in room.media.publications.values()))
    sent = {seat: room.peers[seat].video_track.sent for seat in BASE_SEATS}
    await room.media.close()
    # Frames sent before the close still land while it runs: the recording ends at the close.
    sent_by_close = {seat: room.peers[seat].video_track.sent for seat in BASE_SEATS}

    recording = room.media.recording
    assert recording is not None
    videos = {f.seat: f for f in recording.files if f.kind == "video"}
    audios = {f.seat: f for f in recording.files if f.kind == "audio"}
    assert set(videos) == set(audios) == {seat.value for seat in BASE_SEATS}
    for seat in BASE_SEATS:
        info = videos[seat.value]
        assert info.path.name == f"{seat.value}-video-01.mkv" and info.codec == "H264"
        assert audios[seat.value].path.name == f"{seat.value}-audio-01.webm"
        with av.open(str(info.path)) as container:
            assert container.format.name == "matroska,webm"
            packets = [p for p in container.demux(container.streams.video[0]) if p.size]
        with av.open(str(info.path)) as container:
            pictures = [(frame.width, frame.height) for frame in container.decode(video=0)]
        assert len(packets) == info.frames == len(pictures)
        assert set(pictures) == {(WIDTH, HEIGHT)}
        # Recording started with the room live, a few frames after the peer began sending.
        assert sent[seat] - 10 <= info.frames <= sent_by_close[seat], (info.frames, sent[seat])
        assert info.write_errors == 0
        duration_ms = (info.last_ms or 0) - (info.first_ms or 0)
        assert abs(duration_ms - (info.frames - 1) * 1000 / 30) < 100
        track = _matroska_track(info.path)
        assert track[CODEC_ID] == b"V_MPEG4/ISO/AVC"
        assert int.from_bytes(track[PIXEL_WIDTH], "big") == WIDTH
        assert int.from_bytes(track[PIXEL_HEIGHT], "big") == HEIGHT
        # Audio and video of one person are on the same clock: they end together.
        assert abs((audios[seat.value].last_ms or 0) - (info.last_ms or 0)) < 100


async def test_every_participant_of_an_h264_room_receives_the_other_two(h264_room: Room) -> None:
    room = h264_room
    for seat in BASE_SEATS:
        await room.join(seat)
    room.media.update_view(SessionView(admitted=set(BASE_SEATS)))
    await until(
        lambda: all(
            room.frames(s, p, kind) >= 60
            for s in BASE_SEATS
            for p in BASE_SEATS
            if s != p
            for kind in ("video", "audio")
        )
    )
    for subscriber in BASE_SEATS:
        for publisher in BASE_SEATS:
            if subscriber == publisher:
                continue
            stream = room.peers[subscriber].received_from(publisher.value, "video")
            assert stream.keyframes >= 1, (subscriber, publisher)
            # aiortc depayloads to Annex B with the parameter sets in band, in the IDR's frame.
            keyframe = stream.sample_keyframe
            assert keyframe is not None and keyframe.startswith(b"\x00\x00\x00\x01")
            assert h264.parameter_sets(keyframe) is not None
            assert _decoded_size(keyframe) == (WIDTH, HEIGHT)
