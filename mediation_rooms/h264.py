"""What the recorder reads from an H.264 access unit: its NAL units and the picture size.

aiortc depayloads H.264 RTP to Annex B: each NAL unit of a frame behind a start code
(``00 00 01`` or ``00 00 00 01``). Nothing here decodes a picture; :class:`SequenceParameterSet`
parses the one header that carries the picture size (ITU-T H.264 7.3.2.1.1) as far as the
frame cropping, and stops there. No I/O: bytes in, values out; malformed input raises
``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
START_CODE = b"\x00\x00\x01"
#: Profiles whose SPS carries the chroma format, bit depths and scaling lists (7.3.2.1.1).
HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def nal_units(access_unit: bytes) -> Iterator[bytes]:
    """The NAL units of an Annex B access unit (header byte first, start codes removed)."""
    for piece in access_unit.split(START_CODE)[1:]:
        # A NAL unit never ends in a zero byte (7.4.1): trailing zeros are the first byte of a
        # four-byte start code, or trailing_zero_8bits.
        nal = piece.rstrip(b"\x00")
        if nal:
            yield nal


def nal_type(nal: bytes) -> int:
    """``nal_unit_type`` of a NAL unit (its header byte first)."""
    return nal[0] & 0x1F


def parameter_sets(access_unit: bytes) -> tuple[bytes, bytes] | None:
    """The access unit's first SPS and first PPS NAL units, or ``None`` unless it has both."""
    sps = pps = None
    for nal in nal_units(access_unit):
        if nal_type(nal) == NAL_SPS and sps is None:
            sps = nal
        elif nal_type(nal) == NAL_PPS and pps is None:
            pps = nal
    return (sps, pps) if sps is not None and pps is not None else None


class _BitReader:
    """MSB-first bits of an RBSP, with the Exp-Golomb codes of H.264 9.1."""

    def __init__(self, rbsp: bytes) -> None:
        self._value = int.from_bytes(rbsp, "big")
        self._left = len(rbsp) * 8

    def bits(self, count: int) -> int:
        if count > self._left:
            raise ValueError("SPS ends early")
        self._left -= count
        return (self._value >> self._left) & ((1 << count) - 1)

    def flag(self) -> bool:
        return bool(self.bits(1))

    def ue(self) -> int:
        zeros = 0
        while not self.bits(1):
            zeros += 1
            if zeros > 31:  # no syntax element of an SPS needs more (values < 2**32)
                raise ValueError("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code % 2 else -(code // 2)


def _rbsp(nal: bytes) -> bytes:
    """The NAL unit's payload without its header byte and emulation prevention bytes."""
    # replace() scans left to right and never rescans what it wrote: exactly the removal of
    # 7.3.1 (each 0x03 after two zero bytes goes; the byte after it is kept, even a 0x03).
    return nal[1:].replace(b"\x00\x00\x03", b"\x00\x00")


def _skip_scaling_list(reader: _BitReader, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + reader.se() + 256) % 256
        last = next_scale or last


@dataclass(frozen=True, slots=True)
class SequenceParameterSet:
    """The fields of an SPS up to its frame cropping; ``width``/``height`` are the displayed
    (cropped) picture size in pixels."""

    profile_idc: int
    level_idc: int
    chroma_format_idc: int
    frame_mbs_only: bool
    width: int
    height: int

    @classmethod
    def parse(cls, nal: bytes) -> SequenceParameterSet:
        """Parse an SPS NAL unit (header byte included); ``ValueError`` if it is not one."""
        if not nal or nal_type(nal) != NAL_SPS:
            raise ValueError("not an SPS NAL unit")
        reader = _BitReader(_rbsp(nal))
        profile_idc = reader.bits(8)
        reader.bits(8)  # constraint_set0..5 flags, reserved_zero_2bits
        level_idc = reader.bits(8)
        reader.ue()  # seq_parameter_set_id
        chroma_format_idc, separate_colour_plane = 1, False
        if profile_idc in HIGH_PROFILES:
            chroma_format_idc = reader.ue()
            if chroma_format_idc > 3:
                raise ValueError(f"chroma_format_idc {chroma_format_idc}")
            if chroma_format_idc == 3:
                separate_colour_plane = reader.flag()
            reader.ue()  # bit_depth_luma_minus8
            reader.ue()  # bit_depth_chroma_minus8
            reader.flag()  # qpprime_y_zero_transform_bypass_flag
            if reader.flag():  # seq_scaling_matrix_present_flag
                for index in range(8 if chroma_format_idc != 3 else 12):
                    if reader.flag():  # seq_scaling_list_present_flag[index]
                        _skip_scaling_list(reader, 16 if index < 6 else 64)
        reader.ue()  # log2_max_frame_num_minus4
        pic_order_cnt_type = reader.ue()
        if pic_order_cnt_type == 0:
            reader.ue()  # log2_max_pic_order_cnt_lsb_minus4
        elif pic_order_cnt_type == 1:
            reader.flag()  # delta_pic_order_always_zero_flag
            reader.se()  # offset_for_non_ref_pic
            reader.se()  # offset_for_top_to_bottom_field
            for _ in range(reader.ue()):  # num_ref_frames_in_pic_order_cnt_cycle
                reader.se()  # offset_for_ref_frame[i]
        elif pic_order_cnt_type != 2:
            raise ValueError(f"pic_order_cnt_type {pic_order_cnt_type}")
        reader.ue()  # max_num_ref_frames
        reader.flag()  # gaps_in_frame_num_value_allowed_flag
        width_mbs = reader.ue() + 1
        height_map_units = reader.ue() + 1
        frame_mbs_only = reader.flag()
        if not frame_mbs_only:
            reader.flag()  # mb_adaptive_frame_field_flag
        reader.flag()  # direct_8x8_inference_flag
        crop_left = crop_right = crop_top = crop_bottom = 0
        if reader.flag():  # frame_cropping_flag
            crop_left, crop_right = reader.ue(), reader.ue()
            crop_top, crop_bottom = reader.ue(), reader.ue()
        # Crop offsets count chroma samples (7.4.2.1.1): (SubWidthC, SubHeightC) by
        # ChromaArrayType; a field-coded sequence (frame_mbs_only 0) counts rows in pairs.
        chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
        sub_width, sub_height = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}[chroma_array_type]
        field_factor = 1 if frame_mbs_only else 2
        width = width_mbs * 16 - sub_width * (crop_left + crop_right)
        height = height_map_units * 16 * field_factor - sub_height * field_factor * (
            crop_top + crop_bottom
        )
        if width <= 0 or height <= 0:
            raise ValueError(f"cropped away the whole picture ({width}x{height})")
        return cls(profile_idc, level_idc, chroma_format_idc, frame_mbs_only, width, height)
