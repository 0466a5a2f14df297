"""virtio-blk: drive options, request parsing, the device."""
from kvmm.virtio.blk.device import Block
from kvmm.virtio.blk.drive import Drive, DriveConfig, open_drive, open_drives, parse_drive
from kvmm.virtio.blk.request import BadRequest, BlockRequest, RequestLimits
from kvmm.virtio.errors import DriveError

__all__ = ["Block", "Drive", "DriveConfig", "DriveError", "open_drive",
           "open_drives", "parse_drive", "BadRequest", "BlockRequest", "RequestLimits"]
