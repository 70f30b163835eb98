"""The labelling config: which RectangleLabels control and Image the backend writes to, and label names.

Model classes map to the config's labels **by name, case-insensitive**. When nothing matches by name and
both the model and the control have exactly one class (the common case: a one-class ``deposit`` detector and
a project whose single label is called e.g. ``EDD``), model class 0 maps to the control's single label.
Other unmatched model classes are dropped from predictions (and logged once by the service): Label Studio
would refuse a region whose label is not in the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LabelConfigError", "LabelSchema", "parse_label_config"]


class LabelConfigError(ValueError):
    """The labelling config is missing, unparsable, or has no RectangleLabels control on an Image."""


@dataclass(frozen=True)
class LabelSchema:
    """What the backend needs from a labelling config.

    Attributes:
        from_name: the RectangleLabels control's ``name``.
        to_name: the Image object's ``name``.
        image_key: the task data key the Image reads (``$image`` -> ``"image"``).
        labels: the control's label values, in config order.
    """

    from_name: str
    to_name: str
    image_key: str
    labels: tuple[str, ...]

    @property
    def label_to_id(self) -> dict[str, int]:
        """Label value -> index into :attr:`labels`."""
        return {name: i for i, name in enumerate(self.labels)}

    def class_map(self, model_names: Sequence[str]) -> dict[int, int]:
        """Model class index -> label index, by case-insensitive name (see the module docstring)."""
        by_lower = {name.lower(): i for i, name in enumerate(self.labels)}
        mapping = {
            c: by_lower[name.lower()] for c, name in enumerate(model_names) if name.lower() in by_lower
        }
        if not mapping and len(model_names) == 1 and len(self.labels) == 1:
            mapping = {0: 0}
        return mapping


def parse_label_config(xml: str | None) -> LabelSchema:
    """Find the first RectangleLabels control bound to an Image in a labelling config.

    Args:
        xml: the labelling config (``label_config`` in /predict, ``schema`` in /setup).

    Raises:
        LabelConfigError: on a missing or unparsable config, or one without a RectangleLabels on an Image.
    """
    if not xml or not xml.strip():
        raise LabelConfigError("label_config: required (the project's labelling config XML), got nothing")
    # Imported here: the SDK import costs ~1 s and the module must stay light at import.
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises several private exception types for bad XML
        raise LabelConfigError(f"label_config: not a valid labelling config ({exc})") from None
    for control in interface.controls:
        if control.tag.lower() != "rectanglelabels":
            continue
        for obj in control.objects:
            if obj.tag.lower() != "image":
                continue
            value = str(obj.value or "")
            if not value.startswith("$") or len(value) < 2:
                raise LabelConfigError(
                    f'label_config: Image {obj.name!r} must read a task field (value="$image"), got {value!r}'
                )
            labels = tuple(str(v) for v in control.labels)
            if not labels:
                raise LabelConfigError(
                    f"label_config: RectangleLabels {control.name!r} has no <Label> values"
                )
            return LabelSchema(from_name=control.name, to_name=obj.name, image_key=value[1:], labels=labels)
    raise LabelConfigError(
        "label_config: expected a <RectangleLabels> control with toName pointing at an <Image>, found none"
    )
