"""The block layer: bios, blk-map, request splitting and merging, devices (``block/``)."""
