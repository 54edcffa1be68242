"""Numbers the network was trained with; one source of truth for every module."""

CROP_SIZE = 224  # network input side, pixels
BOX_SCALE_UNIT = 200.0  # the reference expresses box sides as scale = side / 200
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_PART_CLASSES = 23  # part segmentation: background + 22 parts
FEATURE_SIZE = 56  # backbone / decoder feature maps are 56x56 for a 224 crop
