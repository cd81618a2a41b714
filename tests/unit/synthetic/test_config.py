"""ArchiveConfig: validation, hashing, the demo and tiny presets."""

from __future__ import annotations

import pydantic
import pytest

from tasks.synthetic import DEMO_CONFIG, ArchiveConfig, config_hash, tiny_config


def test_config_hash_is_stable_and_tracks_every_field() -> None:
    assert config_hash(tiny_config()) == config_hash(tiny_config())
    assert config_hash(tiny_config()) != config_hash(tiny_config(seed=1))
    assert config_hash(tiny_config()) != config_hash(tiny_config(months=(6, 9)))


def test_config_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        DEMO_CONFIG.seed = 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("landsat_years", (1980, 1990), "landsat_years"),
        ("sentinel2_years", (2024, 2030), "sentinel2_years"),
        ("months", (9, 4), "months"),
        ("builtup_end", 0.01, "builtup_end"),
        ("size_m", 100.0, "size_m"),
        ("roof_materials", (0.0, 0.0, 0.0, 0.0), "roof_materials"),
        ("roof_materials", (1.0, -0.5, 0.2, 0.3), "roof_materials"),
        ("snow", 1.5, "snow"),
        ("paddy_share", 0.9, "paddy_share"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        ArchiveConfig.model_validate({field: value})


def test_presets_describe_the_demo_and_the_test_archive() -> None:
    assert DEMO_CONFIG.size_m == 4000 and DEMO_CONFIG.max_scenes_per_year == 3
    assert DEMO_CONFIG.platform_years("landsat-5") == (1985, 2026)
    tiny = tiny_config(seed=5)
    assert tiny.seed == 5 and tiny.size_m == 1500
    assert tiny.platform_years("sentinel-2a") == (2023, 2023)
    assert ArchiveConfig(platforms=("landsat-8",)).platform_years("sentinel-2a") is None
