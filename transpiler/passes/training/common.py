"""Constants and the plan records shared by the training rule's modules."""
from __future__ import annotations

import builtins
from dataclasses import dataclass, field

import libcst as cst


OPTIMIZER_PREFIX = "torch.optim."


SCHEDULER_PREFIX = "torch.optim.lr_scheduler."


HOST_SCHEDULERS = {"torch.optim.lr_scheduler.ReduceLROnPlateau": "TorchReduceLROnPlateau",
                   "torch.optim.lr_scheduler.SequentialLR": "TorchSequentialLR"}


AUTOCAST = {"torch.autocast", "torch.amp.autocast", "torch.cuda.amp.autocast", "torch.cpu.amp.autocast"}


SCALERS = {"torch.amp.GradScaler", "torch.cuda.amp.GradScaler", "torch.GradScaler", "torch.cpu.amp.GradScaler"}


CLIP_CALLS = {"torch.nn.utils.clip_grad_norm_": "norm", "torch.nn.utils.clip_grad_value_": "value"}


BATCHNORM_PREFIXES = ("torch.nn.BatchNorm", "torch.nn.SyncBatchNorm", "torch.nn.LazyBatchNorm")


RNG_KEY = "rng_key"      # the key random ops in script code use (ops rule, JP403)


STATE = "train_state"   # the threaded TrainState; "state" is too common in RL scripts


BUILTINS = set(dir(builtins))


@dataclass
class LoopPlan:
    step_name: str
    model: str
    optimizer: str
    segment: list[cst.SimpleStatementLine]            # original statements, in order
    deferred: list[cst.SimpleStatementLine]
    removed: list[cst.SimpleStatementLine]             # zero_grad, backward, step, clipping
    clips: list[tuple[cst.SimpleStatementLine, str]]   # (statement, "norm" | "value")
    loss: cst.BaseExpression                           # the backward() receiver (original)
    inputs: list[str] = field(default_factory=list)
    local: set[str] = field(default_factory=set)
    static: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    boundary: list[str] = field(default_factory=list)  # loop target names turned into arrays
    init_args: list[cst.Arg] = field(default_factory=list)
    accumulate: cst.BaseExpression | None = None       # micro-batches per step (gradient accumulation)
    loop_bound: set[str] = field(default_factory=set)  # names the training loop(s) bind
    flat: dict[str, str] = field(default_factory=dict)  # static parameter → the attribute read it replaces
    early: cst.SimpleStatementLine | None = None       # a no_grad model call before the step: create the state there
    joint: list[tuple[str, str]] = field(default_factory=list)  # (model, optimizer) stepped on one loss (actor-critic)
    state: str = STATE                                 # where the step's caller keeps the state (self.train_state)
    function: bool = False                             # the segment is a function's body (a single-step function)
    scope: cst.CSTNode | None = None                   # the function (or method) the segment is in
    trainer: str | None = None                         # the plain class holding model and optimizer (self.model)
    self_attrs: list[str] = field(default_factory=list)  # self.X values the segment reads (static arguments)
    hoisted: list[cst.SimpleStatementLine] = field(default_factory=list)  # host code moved before the call


@dataclass
class TrainerInfo:
    """A plain (not nn.Module) class holding a model and its optimizer as attributes."""
    name: str
    optimizer: str = ""          # "self.optimizer"
    model: str = ""              # "self.model"
    init: cst.FunctionDef | None = None
    methods: set[str] = field(default_factory=set)
    problem: str | None = None   # why its steps are not converted (JP602)


@dataclass
class FunctionInfo:
    node: cst.FunctionDef
    needs: bool = False       # reads the state
    returns: bool = False     # changes the state
    creates: bool = False     # builds the optimizer (state is local)
    called: set[str] = field(default_factory=set)   # names called in the body (f(x), not a.f(x)), by the pre-scan
    text: str | None = None   # the body's source (printed once, by ScanMixin._body_text)
    trains: bool | None = None  # StatementsMixin._scope_trains, asked once


class Unsupported(Exception):
    pass


COMMA = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
