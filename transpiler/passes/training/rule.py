"""TrainingRule: the mixins put together, the rule's state and its scope tracking."""
from __future__ import annotations

import libcst as cst

from ..base import Rule
from .common import FunctionInfo, LoopPlan, STATE, TrainerInfo
from .leftovers import LeftoversMixin
from .multi import MultiModelMixin
from .optimizers import OptimizerMixin
from .planning import PlanningMixin
from .rng import RngMixin
from .scan import ScanMixin
from .statements import StatementsMixin
from .step import StepMixin
from .trainer import TrainerMixin


class TrainingRule(ScanMixin, PlanningMixin, MultiModelMixin, StepMixin, StatementsMixin, OptimizerMixin,
                   RngMixin, LeftoversMixin, TrainerMixin, Rule):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.models: set[str] = set()
        self.optimizers: dict[str, str] = {}      # optimizer var → model var
        self.schedulers: dict[str, str] = {}      # scheduler var → optimizer var
        self.losses: set[str] = set()
        self.batchnorm = False
        self.seed = "0"
        self.plans: dict[int, LoopPlan] = {}      # id(original For) → plan
        self.failed: dict[int, str] = {}
        self.eval_loops: set[int] = set()
        self.functions: dict[str, FunctionInfo] = {}
        self.converted: dict[int, cst.SimpleStatementLine] = {}   # id(original stmt) → updated
        self.segment_ids: dict[int, LoopPlan] = {}
        self.step_sources: list[str] = []         # train_step functions, in order
        self.function_stack: list[str] = []
        self.class_depth = 0
        self.mode: dict[str, str] = {}            # function → "train" | "eval" (by model.train()/eval())
        self.segment_depth = 0
        self.selectors: dict[str, str] = {}       # name bound to [p for n, p in M.named_parameters() if ...] → M
        self.lists: dict[str, cst.List] = {}      # name bound to a list literal (parameter groups)
        self.groups: dict[str, list] = {}         # optimizer var → [(label, params expr, dict)] of its groups
        self.lr_written: set[str] = set()         # optimizers whose param_groups' "lr" the script writes
        self.outer_removed: set[int] = set()      # statements of an accumulation loop's outer loop to drop
        self.seed_scopes: set[str | None] = set()  # functions (None: module) that call torch.manual_seed
        self.multi_plans: dict[int, list] = {}   # id(loop) → plans of its backward/step pairs (GAN)
        self.scalers: set[str] = set()            # GradScaler variables (mixed precision, JP613)
        self.plateau: set[str] = set()            # ReduceLROnPlateau schedulers (step(metric))
        self.sample_stream = False                # a module samples (torch.randn_like in forward)
        self.global_key: set[str] = set()         # functions that split the module-level rng_key
        self.keyed: set[str] = set()              # functions given an rng_key parameter by their seeded callers
        self.track_ids: set[int] = set()          # statements whose converted form leave_For looks for
        self.converted_all: dict[int, list] = {}   # id(tracked original) → every statement it became
        self.covered: set[int] = set()            # backward()/step() statements of loops reported JP602
        self._held: dict[str, str] | None = None  # optimizer attribute of a class (self.optimizer) → class
        self.def_stack: list[cst.FunctionDef] = []
        self.class_stack: list[cst.ClassDef] = []
        self.trainers: dict[str, TrainerInfo] = {}   # plain classes holding a model and its optimizer
        self.trainer: TrainerInfo | None = None      # the one whose body is being converted
        self.function_failed: dict[int, str] = {}    # id(single-step function) → why it is not converted
        self.step_callers: dict[str, str] = {}       # single-step function → why its calls cannot be threaded
        self.answers: dict[tuple[str, int], tuple] = {}   # (question, id(node)) → (node, answer): _once

    @property
    def multi(self) -> bool:
        """Several models, each with its own optimizer (a GAN): one TrainState per model."""
        return len(set(self.optimizers.values())) > 1

    def _state(self, model: str | None) -> str:
        if not self.multi or model is None:
            return STATE
        return model.replace(".", "_") + "_state"

    def _opt_state(self, optimizer: str | None) -> str:
        return self._state(self.optimizers.get(optimizer)) if optimizer else STATE

    def _scope_node(self):
        if self._in_trainer():
            return self.def_stack[0]
        fn = self._function()
        if fn is not None and fn in self.functions:
            return self.functions[fn].node
        return self.module_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.function_stack.append(node.name.value)
        self.def_stack.append(node)
        self._plan_function(node)

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.class_depth += 1
        self.class_stack.append(node)
        if self.class_depth == 1:
            self.trainer = self.trainers.get(node.name.value)

    def leave_ClassDef(self, original, updated):
        self.class_depth -= 1
        self.class_stack.pop()
        if not self.class_depth:
            self.trainer = None
        return updated

    def _once(self, question: str, node: cst.CSTNode, answer):
        """``answer(node)``, computed once per node for the file (a function may hold several
        training loops, each asking about the whole function). The result is shared: callers
        do not change it."""
        known = self.answers.get((question, id(node)))
        if known is None or known[0] is not node:   # (holding the node keeps its id unique)
            known = self.answers[question, id(node)] = (node, answer(node))
        return known[1]

    def _function(self) -> str | None:
        return self.function_stack[0] if self.function_stack and self.class_depth == 0 else None

    def _swap_pending(self, code: str, new_code: str, message: str) -> None:
        """Replace the ``code`` diagnostics reported on the statement being left (another
        rule's warning that this rule has resolved) by ``new_code``."""
        from ... import diagnostics as diag
        pending = self.ctx.statement_stack[-1] if self.ctx.statement_stack else []
        for d in [d for d in pending if d.code == code]:
            pending.remove(d)
            for i, other in enumerate(self.ctx.diagnostics):
                if other is d:
                    self.ctx.diagnostics[i] = diag.make(new_code, message, d.line, d.col)
                    if self.ctx.diagnostics[i].severity in ("warning", "error"):
                        pending.append(self.ctx.diagnostics[i])   # keeps its marker comment
