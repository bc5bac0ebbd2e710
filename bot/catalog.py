"""The service catalogue: services, agent groups and the ITIL priority matrix.

Loaded from YAML (``DESKBOT_CATALOG``; a sample ships in ``config/catalog.yaml``).
Priority = impact × urgency through the configured matrix; a VIP uplift applies only on
services that allow it, and the result always carries a plain-language reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rapidfuzz import fuzz, process, utils

logger = logging.getLogger(__name__)


class CatalogError(ValueError):
    """The catalogue file is missing or malformed; the message names the file and key."""


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    aliases: tuple[str, ...] = ()
    owner: str | None = None
    agent_group: str | None = None
    sla_policy: str | None = None
    criticality: str = "medium"
    vip_uplift: bool = False


@dataclass(frozen=True, slots=True)
class AgentGroup:
    id: str
    name: str
    lead: str | None = None


@dataclass(frozen=True, slots=True)
class PriorityDecision:
    priority: int
    name: str
    reason: str
    vip_uplift: bool


@dataclass(frozen=True, slots=True)
class Catalog:
    services: Mapping[str, Service]
    groups: Mapping[str, AgentGroup]
    impact_levels: Mapping[int, str]
    urgency_levels: Mapping[int, str]
    matrix: tuple[tuple[int, ...], ...]
    priority_names: Mapping[int, str]
    vip_uplift_steps: int = 1
    vips: frozenset[str] = frozenset()
    _choices: dict[str, str] = field(default_factory=dict)
    _found: dict[tuple[str, float], Service | None] = field(default_factory=dict)
    _labels_by_words: dict[int, list[str]] = field(init=False, repr=False)
    _label_order: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_words: dict[int, list[str]] = {}
        for label in self._choices:
            by_words.setdefault(len(label.split()), []).append(label)
        object.__setattr__(self, "_labels_by_words", by_words)
        object.__setattr__(
            self, "_label_order", {label: i for i, label in enumerate(self._choices)}
        )

    @classmethod
    def load(cls, path: Path) -> Catalog:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CatalogError(f"{path}: catalogue file not found") from exc
        except yaml.YAMLError as exc:
            raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise CatalogError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<catalog>") -> Catalog:
        priority = data.get("priority") or {}
        try:
            impact = {int(k): str(v) for k, v in (priority.get("impact") or {}).items()}
            urgency = {int(k): str(v) for k, v in (priority.get("urgency") or {}).items()}
            matrix = tuple(tuple(int(x) for x in row) for row in priority.get("matrix") or ())
            names = {int(k): str(v) for k, v in (priority.get("names") or {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise CatalogError(f"{source}: priority section is malformed: {exc}") from exc
        impact = impact or {1: "many people", 2: "several people", 3: "one person"}
        urgency = urgency or {1: "cannot work", 2: "hampered", 3: "can work around it"}
        matrix = matrix or ((1, 2, 3), (2, 3, 4), (3, 4, 5))
        if len(matrix) != len(impact) or any(len(row) != len(urgency) for row in matrix):
            raise CatalogError(
                f"{source}: priority.matrix must have {len(impact)} rows of {len(urgency)}"
            )
        names = names or {1: "Critical", 2: "High", 3: "Medium", 4: "Low", 5: "Planning"}
        groups = {
            gid: AgentGroup(
                id=gid, name=str((g or {}).get("name", gid)), lead=(g or {}).get("lead")
            )
            for gid, g in (data.get("agent_groups") or {}).items()
        }
        services: dict[str, Service] = {}
        for sid, raw in (data.get("services") or {}).items():
            if not isinstance(raw, dict):
                raise CatalogError(f"{source}: services.{sid} must be a mapping")
            group = raw.get("agent_group")
            if group and group not in groups:
                raise CatalogError(f"{source}: services.{sid}.agent_group {group!r} is not defined")
            services[str(sid)] = Service(
                id=str(sid),
                name=str(raw.get("name", sid)),
                aliases=tuple(str(a) for a in raw.get("aliases") or ()),
                owner=raw.get("owner"),
                agent_group=group,
                sla_policy=raw.get("sla_policy"),
                criticality=str(raw.get("criticality", "medium")),
                vip_uplift=bool(raw.get("vip_uplift", False)),
            )
        choices: dict[str, str] = {}
        for service in services.values():
            for label in (service.id, service.name, *service.aliases):
                choices[utils.default_process(label.replace("-", " "))] = service.id
        return cls(
            services=services,
            groups=groups,
            impact_levels=impact,
            urgency_levels=urgency,
            matrix=matrix,
            priority_names=names,
            vip_uplift_steps=int(priority.get("vip_uplift", 1)),
            vips=frozenset(str(v).lower() for v in data.get("vips") or ()),
            _choices=choices,
        )

    def find_service(self, text: str, *, threshold: float = 90.0) -> Service | None:
        """The service a phrase names (fuzzy on ids, names and aliases), or None."""
        key = (text, threshold)
        if key in self._found:
            return self._found[key]
        found = self._find_service(text, threshold)
        if len(self._found) > 4096:  # a turn asks several times; keep only recent texts
            self._found.clear()
        self._found[key] = found
        return found

    def _find_service(self, text: str, threshold: float) -> Service | None:
        processed = utils.default_process(text.replace("-", " "))
        if not processed:
            return None
        words = processed.split()
        # each label is compared with every window of the text of its own number of
        # words; one cdist per window length scores all labels of that length at once.
        # A label's score is at most its best hit, so only labels hit at the threshold or
        # above can win: the scorer gives up on the others early (most on their lengths
        # alone) and only the few left are scored, in the catalogue's order (the first of
        # equal scores wins, as when every label was scored)
        hits: dict[str, float] = {}
        for n, labels in self._labels_by_words.items():
            windows = [" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))]
            scores = process.cdist(
                labels, windows, scorer=fuzz.ratio, dtype=np.float64, score_cutoff=threshold
            ).max(axis=1)
            for i in np.flatnonzero(scores >= threshold).tolist():
                hits[labels[i]] = float(scores[i])
        best: tuple[float, str] | None = None
        for label in sorted(hits, key=self._label_order.__getitem__):
            hit = hits[label]
            score = hit - (0 if len(label) > 4 else max(0, 100 - hit) * 2)
            if len(label) <= 3 and hit < 100:
                continue
            if best is None or score > best[0]:
                best = (score, self._choices[label])
        if best is not None and best[0] >= threshold:
            return self.services[best[1]]
        return None

    def priority(
        self, *, impact: int, urgency: int, service: Service | None, vip: bool
    ) -> PriorityDecision:
        impact = min(max(impact, 1), len(self.matrix))
        urgency = min(max(urgency, 1), len(self.matrix[0]))
        base = self.matrix[impact - 1][urgency - 1]
        reason = (
            f"impact {impact} ({self.impact_levels.get(impact, '?')}) × urgency {urgency} "
            f"({self.urgency_levels.get(urgency, '?')}) → P{base} "
            f"{self.priority_names.get(base, '')}"
        ).strip()
        uplift = False
        result = base
        if vip and service is not None and service.vip_uplift and self.vip_uplift_steps > 0:
            result = max(1, base - self.vip_uplift_steps)
            uplift = result != base
            if uplift:
                reason += (
                    f"; raised to P{result} {self.priority_names.get(result, '')} because the "
                    f"requester is a VIP and {service.name} allows a VIP uplift"
                )
        return PriorityDecision(
            priority=result,
            name=self.priority_names.get(result, f"P{result}"),
            reason=reason,
            vip_uplift=uplift,
        )

    def is_vip(self, email: str | None) -> bool:
        return bool(email) and str(email).lower() in self.vips
