"""TAC: reconstruct trigger-activated changes in the latent space, find the poisoned class, repair.

Iwahana et al. 2025, "Robust Backdoor Removal by Reconstructing Trigger-Activated Changes in
Latent Representation", https://arxiv.org/abs/2511.08944. The scan, the pruning, the stand-in
triggers and the TAC loss live in :mod:`tacrecon.tac`; this estimator runs them on the shared
fine-tune base. docs/method.md gives the method and why every default has its value.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tacrecon.data.split import Split
from tacrecon.defenses.base import DEFENSES, columns_held_at_zero
from tacrecon.defenses.finetune import FinetuneDefense
from tacrecon.errors import TacreconError
from tacrecon.metrics import accuracy
from tacrecon.models import Classifier, as_classifier
from tacrecon.tac.config import (
    FLAT,
    GROUPS,
    LEGACY,
    DetectionConfig,
    PriorConfig,
    PruneConfig,
    RobustLookConfig,
    SelfCheckConfig,
    StandInConfig,
)
from tacrecon.tac.detect import ScanResult, latents_of, reconstruct, scan
from tacrecon.tac.pairwise import pair_targets, pairwise_look
from tacrecon.tac.repair import (
    plan_pruning,
    refresh_shifts,
    search_pair_patch,
    search_patch_stand_ins,
    search_stand_ins,
    unlearn_loss,
)
from tacrecon.tac.residual import Residual, estimate_residual
from tacrecon.tac.stand_in import BatchHook, ChasingStandIns, chain, stamp_patches, stamp_stand_ins

# settings that records of earlier revisions did not store: the values those revisions used (no self-check)
_UNSTORED = {"pairwise": False, "prune_low": True, "momentum": 0.9, "weight_decay": 5e-4, "flip": False, "distill": 0.0,
             "distill_stamped": True,
             "stand_in_chase": 0, "stand_in_chase_step": 0.01, "stand_in_patch": 0, "stand_in_patch_steps": 60,
             "stand_in_patch_lr": 0.3,
             **{key: getattr(SelfCheckConfig(rounds=0), name) for key, (group, name) in FLAT.items() if group == "check"}}


@DEFENSES.register("tac")
@dataclass
class TAC(FinetuneDefense):
    """TAC (arXiv 2511.08944): latent QP per class, poisoned-class test, then a fine-tune with the
    TAC loss, stand-in triggers and distillation (a high-side target's units pruned first).

    Args:
        detection, robust, prior: the scan (:mod:`tacrecon.tac.config`): the plain look and its
            test, the robust look, the class-count correction.
        pruning, stand_in: the repair's pruning and stand-in triggers.
        check: the repair's check of its own work (held-out accuracy, residual estimate, rounds).
        force_target: repair this class (only) even if the model looks clean (-1: off);
            otherwise every flagged class is repaired, each with its own s_t.
        pairwise: run the pairwise look (:mod:`tacrecon.tac.pairwise`) after the scan, and repair
            the targets of the pairs it flags too (all-to-all, source-specific, or a target hidden
            from the scan), with one more patch stand-in that sends each flagged source to its own
            target (:func:`~tacrecon.tac.repair.search_pair_patch`), stamped on half of the
            patches' share. Off by default: on the tuning models it flags some clean ones.
        repair: repair after the scan (False: scan only).
        method: ``prune`` (prune the TAC's units, the low side's only with ``prune_low``, then
            fine-tune with them held at 0) or
            ``finetune`` (fine-tune only, with the TAC loss).
        beta: weight of the TAC loss (:func:`~tacrecon.tac.repair.unlearn_loss`; 0: plain CE).
        distill: weight of the distillation from the model before the repair, its logits without
            the targets' columns (:func:`~tacrecon.tac.repair.distillation`; 0: off).
        distill_stamped: distill on the images the stand-ins are stamped on too (False: on the
            unstamped part of each batch only).
        recompute: recompute the s_t against the current model before every epoch.
        freeze_head: fine-tune the body only.
        epochs, lr, batch_size, momentum, weight_decay, crop_padding, flip: the fine-tune
            (:class:`~tacrecon.defenses.finetune.FinetuneDefense`; Nesterov momentum).

    Every hyperparameter also has a flat name (``threshold``, ``prune_stop``, ``stand_in_eps``,
    ...; :data:`~tacrecon.tac.config.FLAT`) that :meth:`from_dict` takes and :meth:`to_dict` gives.

    Example:
        >>> tac = TAC.from_dict({"threshold": 3.5}).fit(model, clean)  # doctest: +SKIP
        >>> tac.target_, tac.scan_.record()["relative"]  # doctest: +SKIP
    """

    paper: ClassVar[str] = ("Iwahana et al. 2025, Robust Backdoor Removal by Reconstructing Trigger-Activated "
                            "Changes in Latent Representation, https://arxiv.org/abs/2511.08944")
    budgets: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {}, "smoke": {"epochs": 1, "force_target": 0, "stand_in_steps": 10, "stand_in_patch_steps": 10}}
    # 2: the high side is pruned to its peak; 3: stand-in triggers; 4: the robust look; 5: the class-count
    # prior; 6: prune_stop 1.1 -> 1.2; 7: patch stand-ins (25 pixels); 8: the low side unpruned, the TAC loss
    # (beta 0.3), distillation on the unstamped images, lr 0.005 (frozen: docs/method.md)
    revision: ClassVar[int] = 8

    detection: DetectionConfig = field(default_factory=DetectionConfig)
    robust: RobustLookConfig = field(default_factory=RobustLookConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    pruning: PruneConfig = field(default_factory=PruneConfig)
    stand_in: StandInConfig = field(default_factory=StandInConfig)
    check: SelfCheckConfig = field(default_factory=SelfCheckConfig)
    force_target: int = -1
    pairwise: bool = False
    repair: bool = True
    method: str = "prune"
    beta: float = 0.3
    distill: float = 1.0
    distill_stamped: bool = False
    recompute: bool = False
    freeze_head: bool = True
    epochs: int = 10
    lr: float = 0.005
    batch_size: int = 128

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, **overrides: Any) -> TAC:
        """TAC from flat names (``threshold``, ``prune_stop``, ...), the names of records of
        revisions <= 6 (``surrogate_eps``, ``second_quantile``, ...), or one dict per group."""
        merged = {LEGACY.get(k, k): v for k, v in {**(values or {}), **overrides}.items()}
        groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        plain: dict[str, Any] = {}
        for key, value in merged.items():
            if key in GROUPS and isinstance(value, Mapping):
                groups[key].update(value)
            elif key in FLAT:
                group, name = FLAT[key]
                groups[group][name] = value
            else:
                plain[key] = value
        unknown = sorted(set(plain) - {f.name for f in fields(cls)} | set(plain) & set(GROUPS))
        if unknown:
            raise TacreconError(f"unknown TAC key(s): {', '.join(unknown)}; known: {', '.join(cls.flat_names())}")
        built = {g: GROUPS[g].from_dict(v) for g, v in groups.items()}
        return super().from_dict({**plain, **built})

    @classmethod
    def flat_names(cls) -> list[str]:
        """Every hyperparameter's flat name."""
        return [*FLAT, *(f.name for f in fields(cls) if f.name not in GROUPS)]

    @classmethod
    def canonical_config(cls, stored: Mapping[str, Any]) -> dict[str, Any]:
        """A stored ``defense_config`` in today's names, with the settings older records did not store."""
        return {**_UNSTORED, **{LEGACY.get(k, k): v for k, v in stored.items()}}

    def to_dict(self) -> dict[str, Any]:
        """The flat names and their values (what records store and ``--set`` takes)."""
        flat = {key: getattr(getattr(self, group), name) for key, (group, name) in FLAT.items()}
        return {**flat, **{f.name: getattr(self, f.name) for f in fields(self) if f.name not in GROUPS}}

    def validate(self) -> None:
        super().validate()
        for group in GROUPS:
            getattr(self, group).validate()
        if self.method not in ("prune", "finetune"):
            raise TacreconError(f"method must be prune or finetune, got {self.method!r}")
        if self.beta < 0 or self.distill < 0:
            raise TacreconError(f"beta and distill must be >= 0, got {self.beta}, {self.distill}")

    def scan(self, model: nn.Module, clean: Split) -> ScanResult:
        """The scan alone on ``model`` (not modified): both looks and their tests, and the
        pairwise look when ``pairwise`` is on (in the result's ``pairwise``)."""
        classifier = as_classifier(model)
        found = scan(classifier, clean, self.detection, self.robust, self.prior)
        if self.pairwise:
            found.pairwise = pairwise_look(classifier, clean, latents=found.latents)
        return found

    def scores(self) -> dict[str, Any]:
        """The scan's record (the ``scores`` of a TAC run's record)."""
        return self.scan_.record()

    def record(self) -> dict[str, Any]:
        """:meth:`Defense.record` and whether the model was repaired."""
        return {**super().record(), "repaired": self.repaired_}

    def defend(self, model: nn.Module, clean: Split, generator: torch.Generator) -> None:
        classifier = as_classifier(model)  # once: a raw module would get a new adapter (and head hook) per call
        if self.force_target >= classifier.num_classes:
            raise TacreconError(f"force_target {self.force_target} is not a class of this model "
                                f"(0..{classifier.num_classes - 1})")
        self.stand_ins_: Tensor | None = None
        self.patches_: tuple[Tensor, Tensor] | None = None
        self.pruned_: list[int] = []
        self.residuals_: list[dict[int, Residual]] = []
        self.teacher_: Classifier | None = None
        self.repaired_ = False
        self.scan_ = self.scan(classifier, clean)
        self.stats_.update(scan_seconds=self.scan_.seconds, qp_iterations=int(self.scan_.plain.qp.iterations.sum()))
        self.targets_ = self.scan_.flagged + pair_targets(self.scan_)
        self.target_ = self.targets_[0] if self.targets_ else None
        targets = [self.force_target] if self.force_target >= 0 else self.targets_
        if targets and self.repair:
            start = time.perf_counter()
            self.checked_repair(classifier, clean, targets, generator)
            self.stats_["repair_seconds"] = time.perf_counter() - start
            self.repaired_ = True

    def checked_repair(self, model: Classifier, clean: Split, targets: list[int], generator: torch.Generator) -> None:
        """Repair rounds on all but the held-out part of ``clean``, the held-out accuracy measured
        after each. ``check.next`` gentle: when the first round drops it past the budget, a second
        round restarts from the model as it was, without pruning the low-side targets and with
        distillation on the unstamped images (weight ``distill``, 1 when 0), and is kept unless
        its accuracy is lower still. Otherwise, after each round, the residual estimate of every
        target; while a backdoor looks present and the accuracy drop is within the budget, another
        round runs: with the TAC loss (beta >= 1) from the model as it was (restart) or on the
        current one (continue), or from the model as it was with the low-side targets pruned
        (prune). A later round that drops the accuracy past the budget is undone."""
        cfg = self.check
        gentle = cfg.next == "gentle" and cfg.rounds > 1
        self.teacher_ = copy.deepcopy(model).eval() if self.distill > 0 or gentle else None
        train, held = clean.split_off(cfg.held_out if cfg.rounds else 0.0, generator.initial_seed())
        accs = [accuracy(model, held)] if len(held) else []
        original = copy.deepcopy(model.state_dict()) if cfg.rounds > 1 else None
        found, beta, pruning, distill, reverted, rounds = self.scan_, self.beta, self.pruning, None, False, 0
        for round_ in range(max(1, cfg.rounds)):
            previous = (copy.deepcopy(model.state_dict()), list(self.pruned_)) if round_ > 0 else None
            if round_ > 0:
                found, beta, pruning, distill = self.later_round(model, clean, original, gentle)
            self.repair_model(model, clean, train, targets, found, beta, generator, pruning, distill)
            rounds += 1
            if cfg.rounds == 0:
                break
            accs += [accuracy(model, held)] if len(held) else []
            over = bool(accs) and accs[0] - accs[-1] > cfg.budget
            if previous is not None and (accs[-1] < accs[-2] if gentle else over):
                model.load_state_dict(previous[0])
                self.pruned_, reverted, rounds = previous[1], True, rounds - 1
                break
            # gentle: once more only after a first round past the budget; else while a backdoor looks left
            again = (over and previous is None) if gentle else self.backdoor_left(model, clean, targets, generator)
            if not again or (over and not gentle):
                break
        self.teacher_ = None  # the model before the repair, only needed while it runs
        self.stats_.update(rounds=rounds, held_out=len(held), held_out_acc=accs,
                           reverted=reverted, residual=[{t: r.record() for t, r in rs.items()} for rs in self.residuals_])

    def later_round(self, model: Classifier, clean: Split, original: dict[str, Tensor] | None,
                    gentle: bool) -> tuple[ScanResult, float, PruneConfig, tuple[float, bool] | None]:
        """Set ``model`` up for a later round of ``check.next``; returns that round's scan, beta,
        pruning and distillation (see :meth:`checked_repair`)."""
        if self.check.next == "continue":
            return self.scan(model, clean), max(self.beta, 1.0), self.pruning, None
        model.load_state_dict(original)
        self.pruned_ = []
        if self.check.next == "restart":
            return self.scan_, max(self.beta, 1.0), self.pruning, None
        distill = (self.distill or 1.0, False) if gentle else None
        return self.scan_, self.beta, replace(self.pruning, low=self.check.next == "prune"), distill

    def backdoor_left(self, model: Classifier, clean: Split, targets: list[int], generator: torch.Generator) -> bool:
        """Estimate the residual of every target (kept in ``residuals_``); True if one is above
        ``check.margin``."""
        start = time.perf_counter()
        self.residuals_.append({t: estimate_residual(model, clean, t, self.check, generator) for t in targets})
        self.stats_["check_seconds"] = self.stats_.get("check_seconds", 0.0) + time.perf_counter() - start
        return any(r.score > self.check.margin for r in self.residuals_[-1].values())

    def repair_model(self, model: Classifier, clean: Split, train: Split, targets: list[int], found: ScanResult,
                     beta: float, generator: torch.Generator, pruning: PruneConfig | None = None,
                     distill: tuple[float, bool] | None = None) -> None:
        """One round: stand-in triggers, then (``method`` prune) the pruning of the TAC's units of
        ``found`` (a scan of ``model`` on ``clean``; ``pruning``, default the estimator's), then
        the fine-tune on ``train`` (``distill``: see :meth:`unlearn`)."""
        hook, stamped = self.stand_in_hook(model, train, targets, found, generator) if self.epochs > 0 else (None, 0.0)
        if self.method == "finetune":
            self.unlearn(model, train, targets, found.shifts[targets].float(), beta, generator, hook, stamped, distill)
            return
        plan = plan_pruning(model, clean, found, targets, pruning or self.pruning, self.detection, self.robust, self.prior)
        self.pruned_ = sorted(set(self.pruned_) | set(plan.units))
        d = found.latents.shape[1]
        self.stats_.update(pruned=len(self.pruned_), latent_dim=d, relative_norms=plan.relative_norms,
                           high_side_norms=plan.high_side_norms)
        head = model.get_classifier()
        with columns_held_at_zero(head, self.pruned_):
            if self.epochs > 0:
                # the TAC that is left: s_t of the pruned model (the loss does not use it at beta 0)
                shifts = (reconstruct(model, latents_of(model, clean.x), self.detection.bias,
                                      self.detection.qp_quantile).shifts[targets].float()
                          if beta > 0 else head.weight.new_zeros(len(targets), d))
                self.unlearn(model, train, targets, shifts, beta, generator, hook, stamped, distill)

    def stand_in_hook(self, model: Classifier, train: Split, targets: list[int], found: ScanResult,
                      generator: torch.Generator) -> tuple[BatchHook | None, float]:
        """The fine-tune's batch hook and the share of each batch, from its start, that it stamps:
        the stand-ins of the low-side ``targets`` (fixed, or chasing the model with
        ``stand_in.chase`` > 0, in which case ``stand_ins_`` follows them) on the first
        ``stand_in.share`` of a batch, and with ``stand_in.patch`` > 0 every target's patch
        stand-in on the next share. (None, 0): nothing to stamp."""
        cfg, hooks, stamped = self.stand_in, list[BatchHook](), 0.0
        stand_ins, stats = search_stand_ins(model, train, targets, found, cfg, self.batch_size, generator)
        self.stats_.update(stats)
        if stand_ins is not None:
            self.stand_ins_ = stand_ins
            if cfg.chase > 0:
                chaser = ChasingStandIns(model, stand_ins, stats["stand_in_targets"], cfg.share, cfg.eps, cfg.chase,
                                         cfg.chase_step)
                self.stand_ins_ = chaser.deltas  # updated in place as the stand-ins chase the model
                hooks.append(chaser)
            else:
                hooks.append(stamp_stand_ins(stand_ins, cfg.share))
            stamped = cfg.share
        if cfg.patch > 0:
            masks, patterns, patch_stats = search_patch_stand_ins(model, train, targets, cfg, generator)
            pairs = self.scan_.pairwise.flagged if self.scan_.pairwise is not None else []
            if pairs:  # one more patch, each flagged source to its own target, stamped in as many turns as the rest
                mask, pattern, pair_stats = search_pair_patch(model, train, pairs, cfg, generator)
                turns = max(1, len(targets))
                masks = torch.cat([masks, mask.repeat(turns, 1, 1, 1)])
                patterns = torch.cat([patterns, pattern.repeat(turns, 1, 1, 1)])
                patch_stats.update(pair_stats)
            self.patches_ = (masks, patterns)
            self.stats_.update(patch_stats)
            hooks.append(stamp_patches(masks, patterns, cfg.share, cfg.share))
            stamped = 2 * cfg.share
        return (chain(*hooks) if hooks else None), stamped

    def unlearn(self, model: Classifier, clean: Split, targets: list[int], shifts: Tensor, beta: float,
                generator: torch.Generator, batch_hook: BatchHook | None, stamped: float = 0.0,
                distill: tuple[float, bool] | None = None) -> list[float]:
        """Fine-tune ``model`` in place with the TAC loss of the s_t ``shifts`` (T, d) (and the
        distillation from ``self.teacher_`` when its weight is > 0, left off the first ``stamped``
        share of each batch unless it is distilled on the stamped images too; ``distill``: that
        (weight, on stamped images), default the estimator's ``distill`` and ``distill_stamped``);
        returns the loss of each epoch."""
        current = [shifts.reshape(len(targets), -1)]
        head = model.get_classifier()
        params = [p for p in model.parameters()
                  if not (self.freeze_head and any(p is q for q in head.parameters()))]
        epoch_hook = refresh_shifts(model, clean, targets, current, self.detection) if self.recompute else None
        teacher = getattr(self, "teacher_", None)  # set during a fit; unlearn may also run on its own
        weight, on_stamped = distill or (self.distill, self.distill_stamped)
        loss = unlearn_loss(current, targets, beta, teacher, weight, skip=0.0 if on_stamped else stamped)
        return self.finetune(model, clean, generator, loss_fn=loss, params=params,
                             batch_hook=batch_hook, epoch_hook=epoch_hook, nesterov=True)
