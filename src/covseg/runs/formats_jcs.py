"""The ``jcs`` checkpoint format: the JCS authors' ``joint.pth`` (github yuhuan-wu/JCS) as a covseg run.

Their ``tools/test_joint.py`` builds ``Models.joint_model.JCS()`` and calls ``load_state_dict`` on
``torch.load(joint.pth)`` directly, so the file is a plain state dict with the model's own names (a
``module.`` prefix of ``DataParallel`` or a ``{"state_dict": ...}`` wrapper of their training
checkpoint is undone by :func:`covseg.utils.state_dicts.read_state_dict`). covseg's ``jcs_published``
has the same submodule names, so the key map is the identity and every key and shape is checked
against it. Preprocessing as their test script: RGB, ÷255, ImageNet mean / std, 512² (they resize
with OpenCV's bilinear ``cv2.resize``). The released network has no classifier: the run's class
probability is the highest pixel probability of its map (see :mod:`covseg.models.jcs_published`), or,
with ``--classifier res2net_cls.pth`` (their separate classification network, ``tools/gen_results.py``),
that network's softmax.
"""

from __future__ import annotations

from covseg.runs.importers import IMAGENET_MEAN, IMAGENET_STD, CheckpointFormat, register_format

JCS_SOURCE = "yuhuan-wu/JCS Models/joint_model.py (JCS: VGG-16 BN + Res2Net-101 v1b 26w4s, GPD, FuseNet, ImprovedDecoder)"
JCS_PREPROCESSING = {
    "channels": 3,
    "size": [512, 512],
    "scale": 255.0,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}
#: ``model.json``'s classification entry: image-level classes of the derived lesion score
JCS_CLASSIFICATION = {
    "output": "class_logits",
    "class_names": ["no_infection", "infection"],
    "labels": "masks",
    "negative_class": 0,
}


def jcs_key(key: str) -> str:
    """A ``Models.joint_model.JCS`` state-dict key as ``jcs_published`` names it: the same name."""
    return key


#: the top-level modules of their classifier (``res2net101_v1b_26w_4s`` with ``fc``; tools/gen_results.py)
CLASSIFIER_MODULES = frozenset(["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"])


def jcs_classifier_key(key: str) -> str | None:
    """A key of their classifier file (``res2net_cls.pth``) as ``jcs_published(classifier=True)`` names it:
    ``fc.weight`` → ``classifier_fc.weight``, the Res2Net's under ``classifier.``; batch-norm step counters
    (``num_batches_tracked``, which their ``strict=False`` load ignores) are dropped."""
    if key.endswith(".num_batches_tracked"):
        return None
    if key == "fc.weight":
        return "classifier_fc.weight"
    if key.split(".", 1)[0] not in CLASSIFIER_MODULES:
        raise KeyError(key)
    return "classifier." + key


JCS_FORMAT = register_format(
    CheckpointFormat(
        name="jcs",
        model="jcs_published",
        init_args={"in_channels": 3, "out_channels": 1, "res2net": "res2net101_v1b_26w_4s"},
        rename=jcs_key,
        preprocessing=JCS_PREPROCESSING,
        class_names=["infection"],
        source=JCS_SOURCE,
        extra={"classification": JCS_CLASSIFICATION},
        classifier_key=jcs_classifier_key,
    ),
    "JCS joint segmentation model (joint.pth, VGG-16 + Res2Net-101); class probability = highest pixel probability, "
    "or their classifier's with --classifier res2net_cls.pth",
)
