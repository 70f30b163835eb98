"""The labelling config: which RectangleLabels control and Image the backend writes to, and the one mapping
between model class names and the config's labels.

The mapping (:meth:`LabelSchema.label_map`) follows the conventions of Label Studio's ML backends:

* a ``<Label value="Deposit" predicted_values="deposit,edd"/>`` maps the model classes ``deposit`` and ``edd``
  to the label ``Deposit`` (comma-separated; an explicit ``predicted_values`` wins over a name match);
* otherwise a model class maps to the label of the same name, **case-insensitive**;
* when nothing matches, the model has exactly one class and the config exactly one label that is not a
  deletion label (:data:`DROP_LABEL_NAMES`), that class maps to that label (the common case: a one-class
  ``deposit`` detector and a project whose label is called e.g. ``EDD``).

Model classes that map to no label are dropped from predictions (and logged once by the service): Label
Studio would refuse a region whose label is not in the config. For training the mapping is read backwards:
a label's boxes train the (first) model class mapped to it; boxes of other labels (e.g. a ``background``
deletion label) are left out. Crowd labels typed by hand are looked up case-insensitively
(:attr:`LabelSchema.label_ids`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from selection.detections import Detections

__all__ = [
    "DROP_LABEL_NAMES",
    "LabelConfigError",
    "LabelMap",
    "LabelNames",
    "LabelSchema",
    "parse_label_config",
    "predictable_labels",
]

DROP_LABEL_NAMES = ("background", "drop", "delete", "noise")
"""Label names (case-insensitive) that, when present in the config, mark boxes proposed for deletion."""


class LabelConfigError(ValueError):
    """The labelling config is missing, unparsable, or has no RectangleLabels control on an Image."""


class LabelNames(Mapping[str, int]):
    """Name -> index where lookups ignore case; iterates over the names as given.

    >>> ids = LabelNames({"Deposit": 0, "background": 1})
    >>> ids["DEPOSIT"], "Background" in ids, list(ids)
    (0, True, ['Deposit', 'background'])
    """

    def __init__(self, items: Mapping[str, int]) -> None:
        self._names = dict(items)
        self._folded: dict[str, int] = {}
        for name, index in self._names.items():
            self._folded.setdefault(name.casefold(), int(index))

    def __getitem__(self, key: str) -> int:
        if not isinstance(key, str):
            raise KeyError(key)
        return self._folded[key.casefold()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.casefold() in self._folded

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"LabelNames({self._names!r})"


@dataclass(frozen=True)
class LabelMap:
    """Model classes <-> config labels for one model (see the module docstring for the rules).

    Attributes:
        class_to_label: model class index -> label index (unmapped classes absent).
        label_to_class: label name (case-insensitive) -> model class index, for training labels.
        unmapped: model class names that map to no label.
    """

    class_to_label: dict[int, int]
    label_to_class: LabelNames
    unmapped: tuple[str, ...]

    def to_labels(self, pred: Detections) -> Detections:
        """Predictions with label indices as ``class_id``; those of unmapped classes are dropped."""
        if len(pred) == 0:
            return pred
        keep = np.array([int(c) in self.class_to_label for c in pred.class_id], bool)
        sub = pred.subset(keep)
        mapped = np.array([self.class_to_label[int(c)] for c in sub.class_id], np.int64)
        return Detections(xyxy=sub.xyxy, class_id=mapped, score=sub.score)


@dataclass(frozen=True)
class LabelSchema:
    """What the backend needs from a labelling config.

    Attributes:
        from_name: the RectangleLabels control's ``name``.
        to_name: the Image object's ``name``.
        image_key: the task data key the Image reads (``$image`` -> ``"image"``).
        labels: the control's label values, in config order.
        predicted_values: per label, the model class names its ``predicted_values`` attribute lists
            (empty tuples when absent; defaults to none for every label).
    """

    from_name: str
    to_name: str
    image_key: str
    labels: tuple[str, ...]
    predicted_values: tuple[tuple[str, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.predicted_values:
            object.__setattr__(self, "predicted_values", tuple(() for _ in self.labels))
        if len(self.predicted_values) != len(self.labels):
            raise ValueError(
                f"predicted_values: expected one tuple per label ({len(self.labels)}), "
                f"got {len(self.predicted_values)}"
            )

    @property
    def label_ids(self) -> LabelNames:
        """Label value (case-insensitive) -> index into :attr:`labels`, e.g. for crowd labels."""
        return LabelNames({name: i for i, name in enumerate(self.labels)})

    def label_map(self, model_names: Sequence[str]) -> LabelMap:
        """The mapping between ``model_names`` (index = model class) and this config's labels.

        >>> schema = LabelSchema("label", "image", "image", ("Deposit", "Rock"), (("dep", "edd"), ()))
        >>> schema.label_map(["EDD", "rock", "cat"]).class_to_label
        {0: 0, 1: 1}
        >>> edd = LabelSchema("label", "image", "image", ("EDD", "background"))
        >>> edd.label_map(["deposit"]).class_to_label  # one class, one label besides the deletion label
        {0: 0}
        """
        by_name: dict[str, int] = {}
        for label_index, values in enumerate(self.predicted_values):
            for value in values:
                by_name.setdefault(value.casefold(), label_index)
        for label_index, label in enumerate(self.labels):
            by_name.setdefault(label.casefold(), label_index)
        class_to_label = {
            c: by_name[name.casefold()] for c, name in enumerate(model_names) if name.casefold() in by_name
        }
        if not class_to_label and len(model_names) == 1:
            kept = [i for i, name in enumerate(self.labels) if name.casefold() not in DROP_LABEL_NAMES]
            if len(kept) == 1:
                class_to_label = {0: kept[0]}
        label_to_class: dict[str, int] = {}
        for c, label_index in sorted(class_to_label.items()):
            label_to_class.setdefault(self.labels[label_index], c)
        unmapped = tuple(str(n) for c, n in enumerate(model_names) if c not in class_to_label)
        return LabelMap(class_to_label, LabelNames(label_to_class), unmapped)


def predictable_labels(schema: LabelSchema, label_map: LabelMap) -> np.ndarray:
    """bool (n_labels,): per label of the config, whether the model's findings on crowd boxes of it mean
    anything: True for the labels a model class maps to, and for deletion labels (``background``...); False
    for the others, which the model was trained without (a label added later): scored, their boxes would all
    look like background. ``/predict`` and the export leave such boxes unscored, as the crowd drew them.

    >>> schema = LabelSchema("label", "image", "image", ("deposit", "rock", "background"))
    >>> predictable_labels(schema, schema.label_map(["deposit"])).tolist()
    [True, False, True]
    """
    mapped = np.zeros(len(schema.labels), bool)
    mapped[list(label_map.class_to_label.values())] = True
    return mapped | np.array([lab.casefold() in DROP_LABEL_NAMES for lab in schema.labels], bool)


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
            return LabelSchema(
                from_name=control.name,
                to_name=obj.name,
                image_key=value[1:],
                labels=labels,
                predicted_values=tuple(_predicted_values(control, label) for label in labels),
            )
    raise LabelConfigError(
        "label_config: expected a <RectangleLabels> control with toName pointing at an <Image>, found none"
    )


def _predicted_values(control: object, label: str) -> tuple[str, ...]:
    """The comma-separated ``predicted_values`` of one ``<Label>``, stripped, empty parts dropped."""
    tag = (getattr(control, "labels_attrs", None) or {}).get(label)
    text = str((getattr(tag, "attr", None) or {}).get("predicted_values") or "")
    return tuple(part.strip() for part in text.split(",") if part.strip())
