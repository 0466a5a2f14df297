"""virtio-blk: opened images, request parsing, the device."""
from kvmm.virtio.blk.device import Block
from kvmm.virtio.blk.drive import Drive, open_drive, open_drives
from kvmm.virtio.blk.request import BadRequest, BlockRequest, RequestLimits
from kvmm.virtio.errors import DriveError

__all__ = ["Block", "Drive", "DriveError", "open_drive", "open_drives", "BadRequest",
           "BlockRequest", "RequestLimits"]
