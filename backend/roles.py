"""Who is crowd and who is expert among Label Studio annotation authors, and where crowd labels come from.

Settings (validated together in ``Settings.from_env``; see docs/USERS.md, "Crowd annotators inside Label
Studio"):

* ``CROWD_SOURCE=field`` (default): crowd labels are the task's ``data.crowd_labels`` records (imported with
  the tasks); every Label Studio annotation is judged by ``EXPERT_MODE`` alone.
* ``CROWD_SOURCE=annotations``: crowd labels are the annotations of the crowd users of the same task, one
  set of boxes per crowd user, fused by ``selection.consensus.merge_annotators`` (``CROWD_MERGE_IOU``,
  ``CROWD_MIN_VOTES``). Crowd users are named by ``CROWD_USERS``: ``all_but_experts`` (default: every author
  ``EXPERT_MODE`` does not name) or ``emails:a@x.org,b@y.org``. Label Studio Community 1.23 has no user
  groups or roles (they are Enterprise features), so people are named by e-mail.

Ambiguous combinations are refused (:func:`check_roles`): crowd from annotations with ``EXPERT_MODE=all``
(every annotation would be both), and an e-mail named in both ``CROWD_USERS`` and ``EXPERT_MODE``. A crowd
user's annotation is never an expert one, even when marked ground truth.

Authors: Label Studio 1.23 sends ``completed_by`` as a user id in ``/predict`` tasks, in task listings and in
webhook payloads; ``/predict`` and task listings also carry ``created_username`` (``"<first> <last>
<email>, <id>"``), webhooks do not. :func:`annotation_email` reads what the annotation holds;
:class:`UserDirectory` resolves the remaining ids through the users API once and caches them.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

__all__ = [
    "CrowdPolicy",
    "CrowdSource",
    "CrowdUsers",
    "UserDirectory",
    "annotation_email",
    "check_roles",
    "expert_annotation",
    "parse_emails",
]


class ExpertPolicy(Protocol):
    """What this module needs of ``backend.settings.ExpertPolicy`` (which imports this module)."""

    @property
    def mode(self) -> enum.Enum: ...

    @property
    def emails(self) -> frozenset[str]: ...

    def is_expert(self, annotation: Mapping[str, Any], *, user_email: str | None = None) -> bool: ...


class CrowdSource(enum.Enum):
    """Where a task's crowd labels come from (``CROWD_SOURCE``)."""

    FIELD = "field"
    """The task's ``data.crowd_labels`` records."""
    ANNOTATIONS = "annotations"
    """The annotations of the crowd users on the task, fused."""


class CrowdUsers(enum.Enum):
    """Which annotation authors are crowd annotators (``CROWD_USERS``)."""

    ALL_BUT_EXPERTS = "all_but_experts"
    """Every author of a submitted annotation that ``EXPERT_MODE`` does not count as expert."""
    EMAILS = "emails"
    """Only the listed users."""


def parse_emails(variable: str, text: str) -> frozenset[str]:
    """``a@x.org, B@y.org`` -> lower-case e-mails.

    Raises:
        ValueError: naming ``variable`` when the list is empty or an entry has no ``@``.
    """
    emails = frozenset(e.strip().lower() for e in text.split(",") if e.strip())
    bad = sorted(e for e in emails if "@" not in e)
    if not emails or bad:
        raise ValueError(
            f"{variable}: expected 'emails:' then comma-separated e-mail addresses, got {text!r}"
        )
    return emails


@dataclass(frozen=True)
class CrowdPolicy:
    """Parsed ``CROWD_SOURCE``, ``CROWD_USERS``, ``CROWD_MERGE_IOU`` and ``CROWD_MIN_VOTES``.

    Attributes:
        source: where crowd labels come from.
        users: who the crowd users are (used with ``source=annotations``).
        emails: the crowd users' e-mails (lower-case) when ``users`` is ``emails``.
        merge_iou: IoU at which boxes of different annotators are the same object.
        min_votes: fused boxes drawn by fewer annotators are dropped.
    """

    source: CrowdSource = CrowdSource.FIELD
    users: CrowdUsers = CrowdUsers.ALL_BUT_EXPERTS
    emails: frozenset[str] = frozenset()
    merge_iou: float = 0.5
    min_votes: int = 1

    @classmethod
    def parse(
        cls, source: str, users: str = "", *, merge_iou: float = 0.5, min_votes: int = 1
    ) -> CrowdPolicy:
        """Parse the texts of ``CROWD_SOURCE`` and ``CROWD_USERS`` ("" = unset).

        Raises:
            ValueError: naming the variable, the expected forms and what came.
        """
        head = source.strip().lower() or CrowdSource.FIELD.value
        try:
            kind = CrowdSource(head)
        except ValueError:
            raise ValueError(f"CROWD_SOURCE: expected 'field' or 'annotations', got {source!r}") from None
        raw = users.strip()
        if kind is CrowdSource.FIELD:
            if raw:
                raise ValueError(
                    f"CROWD_USERS: only used with CROWD_SOURCE=annotations (crowd labels come from the task "
                    f"field data.crowd_labels now); unset it or set CROWD_SOURCE=annotations, got {raw!r}"
                )
            return cls(CrowdSource.FIELD, merge_iou=merge_iou, min_votes=min_votes)
        name, _, tail = raw.partition(":")
        name = name.strip().lower()
        if not raw or (name == CrowdUsers.ALL_BUT_EXPERTS.value and not tail):
            return cls(kind, CrowdUsers.ALL_BUT_EXPERTS, merge_iou=merge_iou, min_votes=min_votes)
        if name == CrowdUsers.EMAILS.value:
            emails = parse_emails("CROWD_USERS", tail)
            return cls(kind, CrowdUsers.EMAILS, emails, merge_iou=merge_iou, min_votes=min_votes)
        raise ValueError(f"CROWD_USERS: expected 'all_but_experts' or 'emails:a@x.org,b@y.org', got {raw!r}")

    @property
    def from_annotations(self) -> bool:
        return self.source is CrowdSource.ANNOTATIONS

    def is_crowd(
        self, annotation: Mapping[str, Any], *, expert: ExpertPolicy, user_email: str | None
    ) -> bool:
        """Whether a submitted annotation is a crowd annotation (always False with ``source=field``).

        Args:
            annotation: the annotation JSON (``was_cancelled``, ``ground_truth``, ``completed_by`` ...).
            expert: the expert policy (``all_but_experts`` is its complement).
            user_email: the author's e-mail when the annotation holds only a user id.
        """
        if not self.from_annotations or annotation.get("was_cancelled"):
            return False
        email = user_email or annotation_email(annotation)
        if self.users is CrowdUsers.EMAILS:
            return email is not None and email.lower() in self.emails
        return not expert.is_expert(annotation, user_email=email)

    def describe(self) -> str:
        """The policy as settings text."""
        if not self.from_annotations:
            return self.source.value
        users = (
            "emails:" + ",".join(sorted(self.emails))
            if self.users is CrowdUsers.EMAILS
            else "all_but_experts"
        )
        return f"{self.source.value} users={users} merge_iou={self.merge_iou} min_votes={self.min_votes}"


def check_roles(expert: ExpertPolicy, crowd: CrowdPolicy) -> None:
    """Refuse settings under which one annotation could be both crowd and expert, or no one is expert.

    Raises:
        ValueError: naming the variables and how to fix them.
    """
    if not crowd.from_annotations:
        return
    if expert.mode.value == "all":
        raise ValueError(
            "CROWD_SOURCE=annotations with EXPERT_MODE=all: every annotation would be both crowd and expert; "
            "name the experts with EXPERT_MODE=emails:a@x.org,... or EXPERT_MODE=ground_truth"
        )
    both = sorted(crowd.emails & expert.emails)
    if both:
        raise ValueError(
            f"CROWD_USERS and EXPERT_MODE: {', '.join(both)} named in both; a person is either crowd or "
            "expert"
        )


def annotation_email(annotation: Mapping[str, Any]) -> str | None:
    """The author's e-mail (lower-case) as far as the annotation itself says, else None.

    Looked up in ``completed_by_email`` (added by this backend's task listing), ``completed_by`` when it is
    an object, then ``created_username`` (``"<first> <last> <email>, <id>"``).
    """
    email = annotation.get("completed_by_email")
    author = annotation.get("completed_by")
    if not email and isinstance(author, Mapping):
        email = author.get("email")
    username = annotation.get("created_username")
    if not email and isinstance(username, str) and "," in username:
        words = username.rpartition(",")[0].split()
        email = words[-1] if words and "@" in words[-1] else None
    return str(email).strip().lower() if email else None


class UserDirectory:
    """Label Studio user id -> e-mail, through the SDK's users API, listed once and cached.

    Args:
        client_factory: builds a ``label_studio_sdk.LabelStudio`` client on first use.
    """

    def __init__(self, client_factory: Callable[[], Any]) -> None:
        self._factory = client_factory
        self._client: Any = None
        self._emails: dict[int, str] = {}
        self._listed = False
        self._lock = threading.Lock()

    def email(self, user_id: int) -> str | None:
        """The user's e-mail (lower-case), or None for an unknown or unreadable user."""
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            if not self._listed:
                self._listed = True
                try:
                    for user in self._client.users.list():
                        if user.id is not None:
                            self._emails[int(user.id)] = str(user.email or "").lower()
                except Exception as exc:  # listing needs an org manager's token; fall back to one by one
                    logger.warning("listing Label Studio users failed (%s); resolving them one by one", exc)
            if user_id not in self._emails:
                try:
                    self._emails[user_id] = str(self._client.users.get(id=user_id).email or "").lower()
                except Exception:  # a deleted or hidden user: neither crowd nor expert by e-mail
                    self._emails[user_id] = ""
            return self._emails[user_id] or None

    def author_email(self, annotation: Mapping[str, Any]) -> str | None:
        """:func:`annotation_email`, else the ``completed_by`` id resolved through the users API."""
        email = annotation_email(annotation)
        author = annotation.get("completed_by")
        if email is None and isinstance(author, int) and not isinstance(author, bool):
            email = self.email(author)
        return email


def expert_annotation(task: Mapping[str, Any], policy: ExpertPolicy) -> dict[str, Any] | None:
    """The task's most recent expert annotation (by ``updated_at``, then ``id``), or None."""
    best: dict[str, Any] | None = None
    for ann in task.get("annotations") or []:
        if not isinstance(ann, Mapping):
            continue
        email = ann.get("completed_by_email")
        if not policy.is_expert(ann, user_email=str(email) if email else None):
            continue
        key = (str(ann.get("updated_at") or ""), int(ann.get("id") or 0))
        if best is None or key >= (str(best.get("updated_at") or ""), int(best.get("id") or 0)):
            best = dict(ann)
    return best
