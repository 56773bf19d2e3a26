"""Import the real RecoGym 0.1.3.0 package without PyTorch.

`import recogym` runs recogym/__init__.py, which imports recogym.envs, which imports
recogym.agents, whose __init__ imports every bundled agent, four of which import torch at
module level (bandit_mf, nn_ips, organic_mf, pytorch_mlr). None of the code used here (the
reco-gym-v1 environment, RandomAgent, OrganicCount, gather_agent_stats/test_agent) calls torch.
A PyPI torch for Python 3.11 is a ~2.7 GB download (CUDA wheels), so when torch is not
installed this module registers a placeholder `torch` package: enough names for those four
modules to import (nn.Module, optim.Optimizer, Tensor, nn.functional, sparse, and inert
stand-ins for the loss/optimizer objects their default-argument dicts create). Anything that
would really use torch (instantiating one of the four torch agents, or using any torch object)
raises a RuntimeError that says so. If a real torch is importable it is used instead.

Everything else that runs is the unmodified recogym package from the venv.
"""
import importlib.util
import os
import sys
import types

STUB_MARK = "__recogym_py_torch_placeholder__"


def _fail(*_args, **_kwargs):
    raise RuntimeError(
        "torch is not installed in the recogym-py venv (scripts/recogym_py/setup.sh skips it); "
        "only the torch-free parts of recogym (envs, RandomAgent, OrganicCount, ...) work here"
    )


class _Placeholder:
    """Base class stand-in (nn.Module, optim.Optimizer, Tensor): subclassing works,
    instantiating fails."""

    def __init__(self, *args, **kwargs):
        _fail()


class _Deferred:
    """Any other torch name, e.g. nn.BCEWithLogitsLoss() or optim.RMSprop in the agents'
    module-level default-argument dicts: constructing one works, using the object fails."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, attr):
        _fail()

    def __call__(self, *args, **kwargs):
        _fail()


def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    setattr(mod, STUB_MARK, True)
    mod.__path__ = []  # a package, so `import torch.x` resolves through sys.modules

    def __getattr__(attr):  # noqa: N807 (module-level __getattr__, PEP 562)
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (_Deferred,), {"__module__": name})

    mod.__getattr__ = __getattr__
    return mod


def _install_torch_placeholder():
    nn_functional = _module("torch.nn.functional")
    nn = _module(
        "torch.nn",
        Module=type("Module", (_Placeholder,), {}),
        Parameter=type("Parameter", (_Placeholder,), {}),
        functional=nn_functional,
    )
    optim = _module("torch.optim", Optimizer=type("Optimizer", (_Placeholder,), {}))
    sparse = _module("torch.sparse")
    torch = _module(
        "torch",
        nn=nn,
        optim=optim,
        sparse=sparse,
        Tensor=type("Tensor", (_Placeholder,), {}),
        __version__="0+recogym-py-placeholder",
    )
    for mod in (torch, nn, nn_functional, optim, sparse):
        sys.modules[mod.__name__] = mod


def load():
    """Import and return (recogym, gym, torch_is_real)."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # recogym.evaluate_agent imports pyplot
    torch_is_real = importlib.util.find_spec("torch") is not None
    if not torch_is_real:
        _install_torch_placeholder()
    import gym  # noqa: E402
    import recogym  # noqa: E402

    return recogym, gym, torch_is_real


def make_env(gym, recogym, products, seed, extra=None):
    """gym.make('reco-gym-v1') + init_gym with env_1_args overridden; returns (env, args)."""
    args = {**recogym.env_1_args, "num_products": products, "random_seed": seed, **(extra or {})}
    env = gym.make("reco-gym-v1")
    env.init_gym(args)
    return env, args


def parse_env_overrides(pairs, base):
    """KEY=VALUE strings -> dict, each VALUE parsed as the type of env_1_args[KEY]."""
    out = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or key not in base:
            raise SystemExit(f"--env {pair!r}: expected KEY=VALUE with KEY one of {sorted(base)}")
        old = base[key]
        if isinstance(old, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"--env {pair!r}: expected true or false")
            val = raw.lower() in ("true", "1")
        elif isinstance(old, (int, float)):
            try:
                val = int(raw) if isinstance(old, int) and raw.lstrip("-").isdigit() else float(raw)
            except ValueError:
                raise SystemExit(f"--env {pair!r}: expected a number") from None
        else:
            raise SystemExit(f"--env {pair!r}: {key} is not a number or a flag")
        out[key] = val
    return out


def jsonable(args):
    """env_1_args as plain JSON values (numpy scalars -> Python)."""
    out = {}
    for key, val in args.items():
        if hasattr(val, "item"):
            val = val.item()
        out[key] = val
    return out
