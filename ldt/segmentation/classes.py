"""The label space: the 19 Cityscapes train classes, ignore index 255, and the Mapillary Vistas v1.2 -> 19 mapping.

Cityscapes ``*_gtFine_labelTrainIds.png`` files and BDD100K ``sem_seg`` masks already hold these train ids (0..18,
255 = ignore), so they need no mapping. Mapillary Vistas v1.2 labels hold its own 66 class ids (the index of the class
in its ``config.json``, 65 = unlabeled); :data:`MAPILLARY_V12_TO_TRAIN_ID` maps them to the 19.

The Mapillary mapping is the table most DG segmentation work evaluates Cityscapes -> Mapillary with (25 of the 66
classes keep a label). Each of the 19 takes the Mapillary classes that match its Cityscapes definition; a class
without an unambiguous counterpart is ignored (255) rather than guessed, so the target-domain mIoU does not count
pixels whose "right" answer is a matter of convention:

- road = road, general lane markings (Cityscapes counts markings as road) and manholes; sidewalk = sidewalk and curb
  (Cityscapes annotates curbs as sidewalk). Bike lanes, service lanes, parking, plain and zebra crosswalks, rail
  track, curb cuts and pedestrian areas are ignored.
- pole = pole and utility pole; traffic sign = the front of signs only; street lights, sign frames, sign backs and
  the other street furniture are ignored.
- rider = bicyclist, motorcyclist and other rider; train = on-rails vehicles. Caravans, trailers, boats, other and
  slow wheeled vehicles, ego vehicle, car mount, animals, guard rails, other barriers, bridges, tunnels, water, snow,
  sand, mountains, banners and billboards are ignored.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# (name, RGB colour) per Cityscapes train id, in train-id order: the official Cityscapes palette.
CITYSCAPES_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)),
    ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)),
    ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in CITYSCAPES_CLASSES)
NUM_CLASSES = len(CLASS_NAMES)
TRAIN_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

# Mapillary Vistas v1.2 classes in the order of its config.json (the label image value is the position), each with
# the Cityscapes class it counts as, or None (ignored).
MAPILLARY_V12_CLASSES: tuple[tuple[str, str | None], ...] = (
    ("animal--bird", None),
    ("animal--ground-animal", None),
    ("construction--barrier--curb", "sidewalk"),
    ("construction--barrier--fence", "fence"),
    ("construction--barrier--guard-rail", None),
    ("construction--barrier--other-barrier", None),
    ("construction--barrier--wall", "wall"),
    ("construction--flat--bike-lane", None),
    ("construction--flat--crosswalk-plain", None),
    ("construction--flat--curb-cut", None),
    ("construction--flat--parking", None),
    ("construction--flat--pedestrian-area", None),
    ("construction--flat--rail-track", None),
    ("construction--flat--road", "road"),
    ("construction--flat--service-lane", None),
    ("construction--flat--sidewalk", "sidewalk"),
    ("construction--structure--bridge", None),
    ("construction--structure--building", "building"),
    ("construction--structure--tunnel", None),
    ("human--person", "person"),
    ("human--rider--bicyclist", "rider"),
    ("human--rider--motorcyclist", "rider"),
    ("human--rider--other-rider", "rider"),
    ("marking--crosswalk-zebra", None),
    ("marking--general", "road"),
    ("nature--mountain", None),
    ("nature--sand", None),
    ("nature--sky", "sky"),
    ("nature--snow", None),
    ("nature--terrain", "terrain"),
    ("nature--vegetation", "vegetation"),
    ("nature--water", None),
    ("object--banner", None),
    ("object--bench", None),
    ("object--bike-rack", None),
    ("object--billboard", None),
    ("object--catch-basin", None),
    ("object--cctv-camera", None),
    ("object--fire-hydrant", None),
    ("object--junction-box", None),
    ("object--mailbox", None),
    ("object--manhole", "road"),
    ("object--phone-booth", None),
    ("object--pothole", None),
    ("object--street-light", None),
    ("object--support--pole", "pole"),
    ("object--support--traffic-sign-frame", None),
    ("object--support--utility-pole", "pole"),
    ("object--traffic-light", "traffic light"),
    ("object--traffic-sign--back", None),
    ("object--traffic-sign--front", "traffic sign"),
    ("object--trash-can", None),
    ("object--vehicle--bicycle", "bicycle"),
    ("object--vehicle--boat", None),
    ("object--vehicle--bus", "bus"),
    ("object--vehicle--car", "car"),
    ("object--vehicle--caravan", None),
    ("object--vehicle--motorcycle", "motorcycle"),
    ("object--vehicle--on-rails", "train"),
    ("object--vehicle--other-vehicle", None),
    ("object--vehicle--trailer", None),
    ("object--vehicle--truck", "truck"),
    ("object--vehicle--wheeled-slow", None),
    ("void--car-mount", None),
    ("void--ego-vehicle", None),
    ("void--unlabeled", None),
)
MAPILLARY_V12_NAMES: tuple[str, ...] = tuple(name for name, _ in MAPILLARY_V12_CLASSES)
MAPILLARY_V12_TO_TRAIN_ID: dict[int, int] = {
    i: IGNORE_INDEX if target is None else TRAIN_ID[target] for i, (_, target) in enumerate(MAPILLARY_V12_CLASSES)
}


def palette() -> np.ndarray:
    """(256, 3) uint8 colours: train id -> Cityscapes colour, every other value (ignore included) black."""
    colours = np.zeros((256, 3), np.uint8)
    colours[:NUM_CLASSES] = [colour for _, colour in CITYSCAPES_CLASSES]
    return colours


def colorize(label: np.ndarray) -> np.ndarray:
    """An (H, W) train-id label as an (H, W, 3) uint8 Cityscapes-coloured image, for figures and inspection."""
    return palette()[label]


def lookup_table(mapping: dict[int, int] | None) -> np.ndarray:
    """(256,) int16 table from raw label value to train id; -1 marks values the label files must not contain.

    ``None`` is the identity for files that already hold train ids (0..18 and 255 valid); a mapping (Mapillary's)
    sends its keys to their train ids and 255 stays ignore.
    """
    table = np.full(256, -1, np.int16)
    table[IGNORE_INDEX] = IGNORE_INDEX
    if mapping is None:
        table[:NUM_CLASSES] = np.arange(NUM_CLASSES)
    else:
        for raw, train_id in mapping.items():
            table[raw] = train_id
    return table


def map_labels(label: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Apply a :func:`lookup_table` to a uint8 label image; raises ValueError listing values the table rejects."""
    mapped = table[label]
    if (mapped < 0).any():
        bad = np.unique(label[mapped < 0])
        raise ValueError(f"label values {bad[:10].tolist()} are not valid for this label layout")
    return mapped.astype(np.uint8)
