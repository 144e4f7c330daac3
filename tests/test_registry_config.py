"""Registry and dataclass config conventions."""

from dataclasses import dataclass

import pytest

from tacrecon.config import Config
from tacrecon.errors import TacreconError
from tacrecon.registry import Registry


def test_registry_register_create_names():
    reg = Registry("thing")

    @reg.register("b_one")
    def one(x=1):
        return x

    @reg.register()
    def a_two(x=2):
        return x

    assert reg.names() == ["a_two", "b_one"]
    assert reg.names("b_*") == ["b_one"]
    assert reg.create("b_one", x=5) == 5
    assert "a_two" in reg and len(reg) == 2
    with pytest.raises(TacreconError, match="unknown thing 'c'; known: a_two, b_one"):
        reg.get("c")
    with pytest.raises(KeyError):
        reg.register("b_one")(one)


@dataclass
class Cfg(Config):
    n: int = 1
    rate: float = 0.5
    name: str = "x"
    flag: bool = False
    sizes: tuple = (1, 2)

    def validate(self):
        if not 0 < self.rate < 1:
            raise TacreconError("rate must be in (0, 1)")


def test_config_from_dict_types_and_unknown_keys():
    cfg = Cfg.from_dict({"n": 3}, rate=0.25)
    assert cfg == Cfg(n=3, rate=0.25)
    assert Cfg.from_dict({"rate": 0.5}).rate == 0.5
    assert isinstance(Cfg.from_dict({"sizes": [3, 4]}).sizes, tuple)
    with pytest.raises(TacreconError, match="unknown Cfg key.*bogus"):
        Cfg.from_dict({"bogus": 1})
    with pytest.raises(TacreconError, match="Cfg.n must be int"):
        Cfg.from_dict({"n": "3"})
    with pytest.raises(TacreconError, match="Cfg.n must be int"):
        Cfg.from_dict({"n": True})
    with pytest.raises(TacreconError, match="Cfg.flag must be bool"):
        Cfg.from_dict({"flag": 1})
    with pytest.raises(TacreconError, match="rate must be"):
        Cfg.from_dict({"rate": 2})
    assert Cfg().replace(n=4).n == 4
    assert Cfg.from_dict({"rate": 0.1}).to_dict()["rate"] == 0.1
