"""Render what a sensor records on its own product grid, before noise and quantisation.

The surface is blurred by the sensor's point spread function and moved by the scene's
misregistration in the Fourier domain on the world grid (content at true position p appears at
p + shift). Sample points are placed on the product grid (pixel centres of 10 m grids, 2 x 2
sub-pixels of coarser ones), carried into the main UTM zone and sampled there, with the
acquisition's cloud, shadow and cirrus fields (sampled at the shifted positions: clouds move
with the image). The scene is composed per sub-pixel and averaged over the pixel (area
integration). Pixels outside the swath and, for Landsat 7 after the SLC failure, in the scan
gaps are no data (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.typing import NDArray

from tasks.aoi import GridSpec
from tasks.synthetic.acquisitions import Acquisition, ItemSpec
from tasks.synthetic.bands import RESPONSE, reflectance_assets
from tasks.synthetic.clouds import Sky, build_sky, truth_classes
from tasks.synthetic.config import ArchiveConfig
from tasks.synthetic.geometry import Bilinear, mesh_in, transform_points
from tasks.synthetic.landscape import rng_for, smooth_noise
from tasks.synthetic.masks import detect, encode_qa_pixel, encode_scl
from tasks.synthetic.spectra import cloud_band_values
from tasks.synthetic.world import World

__all__ = ["RenderedGrid", "RenderedItem", "render_acquisition"]

#: Gaussian point spread function, sigma as a fraction of the native pixel: with the pixel's
#: own area integration this gives an MTF of ~0.3 at Nyquist, typical of MSI and OLI
#: (Sentinel-2 Data Quality Reports; Storey et al. 2014, Remote Sens. 6).
_PSF_SIGMA_PX = 0.4
#: Adjacency effect: scattered light from the surroundings, a Gaussian environment function
#: of this width (m; order of the aerosol layer height's footprint, kept inside the world
#: margin so the Fourier wrap-around stays out of the AOI), with a share of the ground signal
#: that grows with the residual aerosol path reflectance (`_ADJACENCY_PER_HAZE`, capped).
_ADJACENCY_SIGMA_M = 250.0
_ADJACENCY_PER_HAZE = 4.0
_ADJACENCY_MAX = 0.3
#: Angstrom exponent of the residual path reflectance: haze is bluer than the surface.
_HAZE_ANGSTROM = 1.3


@dataclass(frozen=True)
class RenderedGrid:
    """One product grid of an item: noise-free reflectance per asset (dims (row, col),
    unitless, NaN where there is no data), the data mask, and per-pixel means of cloud
    opacity, shadow opacity and cirrus reflectance (the truth the quality layer is made from)."""

    grid: GridSpec
    reflectance: dict[str, NDArray[np.float32]]
    valid: NDArray[np.bool_]
    opacity: NDArray[np.float32]
    shadow: NDArray[np.float32]
    cirrus: NDArray[np.float32]


@dataclass(frozen=True)
class RenderedItem:
    """Everything written for one item except noise: grids (finest first), the truth cloud
    mask on the finest grid (`tasks.synthetic.clouds.TruthClass` codes), and the product's
    quality layer (SCL uint8 on the 20 m grid, or QA_PIXEL uint16 on the 30 m grid)."""

    spec: ItemSpec
    grids: tuple[RenderedGrid, ...]
    truth_mask: NDArray[np.uint8]
    quality: NDArray[np.uint8] | NDArray[np.uint16]

    def band(self, asset: str) -> tuple[NDArray[np.float32], GridSpec]:
        """Noise-free reflectance of `asset` and the grid it is on."""
        for rendered in self.grids:
            if asset in rendered.reflectance:
                return rendered.reflectance[asset], rendered.grid
        raise KeyError(f"{self.spec.id} has no reflectance asset {asset!r}")


def _diffuse_fraction(wavelength_um: float) -> float:
    """Share of irradiance that still reaches a cloud shadow (skylight): Rayleigh-like
    lambda^-4 in the visible over an aerosol floor (order of clear-sky diffuse fractions)."""
    return 0.08 + 0.3 * (0.45 / wavelength_um) ** 4


def _cirrus_factor(wavelength_um: float) -> float:
    """Relative reflectance of thin ice cloud: flat in the VNIR, lower where ice absorbs."""
    return 1.0 if wavelength_um < 1.0 else (0.5 if wavelength_um < 2.0 else 0.3)


def _haze_path(haze: float, wavelength_um: float) -> float:
    """Residual aerosol path reflectance at `wavelength_um` given its value at 450 nm."""
    return haze * (0.45 / wavelength_um) ** _HAZE_ANGSTROM


def _block_mean(values: NDArray[np.float32], k: int) -> NDArray[np.float32]:
    """Mean over non-overlapping k x k blocks of the last two dims (area integration)."""
    if k == 1:
        return values
    total = sum(values[..., i::k, j::k] for i in range(k) for j in range(k))
    return np.asarray(total / np.float32(k * k), dtype=np.float32)


_GridKey = tuple[int, tuple[float, float, float, float], float]  # EPSG, bounds, sample spacing
# World-grid interpolator at sample points, and the sky (opacity, shadow, cirrus) there.
_Samples = tuple[Bilinear, tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]]


class _Renderer:
    """Shared state of one acquisition: its surface (and its Fourier transform), its sky, and
    the sensor views already computed per (resolution, shift)."""

    def __init__(
        self, config: ArchiveConfig, world: World, acquisition: Acquisition, shifted: bool
    ) -> None:
        self.config = config
        self.world = world
        self.acq = acquisition
        self.shift = acquisition.shift_m if shifted else (0.0, 0.0)
        day = acquisition.datetime.date()
        snow = None
        if acquisition.snow > 0:
            noise = smooth_noise(
                rng_for(config, "snow-cover", acquisition.key), world.layout.grid.shape, 25.0
            )
            snow = world.snow_fraction(day, acquisition.snow, noise)
        self.surface = world.surface(
            acquisition.platform, day, soil_wetness=acquisition.soil_wetness, snow=snow
        )
        self.sky: Sky = build_sky(config, acquisition, world.layout.grid)
        self.assets = reflectance_assets(acquisition.platform)
        self.cloud = cloud_band_values(acquisition.platform) * acquisition.cloud_brightness
        self._spectrum: NDArray[np.complex64] | None = None
        self._views: dict[tuple[float, tuple[float, float]], NDArray[np.float32]] = {}
        self._points_cache: dict[_GridKey, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}
        self._samples_cache: dict[_GridKey, _Samples] = {}

    def _sensor_view(self, resolution: float, shift_px: tuple[float, float]) -> NDArray[np.float32]:
        """Surface bands (band, row, col) on the world grid as a sensor of `resolution` sees
        them: blurred by the Gaussian PSF and moved by `shift_px` (columns, rows), both in the
        Fourier domain (the shift theorem is exact for sub-pixel shifts, where interpolation
        would bias them toward whole pixels). The wrap-around touches only the world margin."""
        key = (resolution, shift_px)
        if key in self._views:
            return self._views[key]
        if self._spectrum is None:
            self._spectrum = scipy.fft.rfft2(self.surface)
        rows, cols = self.surface.shape[1:]
        fy = np.fft.fftfreq(rows).astype(np.float32)[:, None]
        fx = np.fft.rfftfreq(cols).astype(np.float32)[None, :]
        sigma = _PSF_SIGMA_PX * resolution / self.world.layout.grid.resolution
        blur = np.exp(np.float32(-2.0 * np.pi**2 * sigma**2) * (fx**2 + fy**2))
        phase = np.exp(
            np.complex64(-2j * np.pi)
            * (fx * np.float32(shift_px[0]) + fy * np.float32(shift_px[1]))
        )
        bands = [i for i, a in enumerate(self.assets) if a.resolution == round(resolution)]
        transfer = (blur * phase)[None]
        if self.acq.haze > 0:
            # Adjacency: a haze-dependent share of each band's signal comes from the
            # surroundings; linear, so one more factor of the transfer function.
            sigma_env = _ADJACENCY_SIGMA_M / self.world.layout.grid.resolution
            env = np.exp(np.float32(-2.0 * np.pi**2 * sigma_env**2) * (fx**2 + fy**2))
            wavelengths = [
                RESPONSE[self.acq.platform][self.assets[i].asset][0] / 1e3 for i in bands
            ]
            share = np.array(
                [
                    min(_ADJACENCY_MAX, _ADJACENCY_PER_HAZE * _haze_path(self.acq.haze, w))
                    for w in wavelengths
                ],
                dtype=np.float32,
            )[:, None, None]
            transfer = transfer * ((1.0 - share) + share * env[None])
        view = np.zeros_like(self.surface)
        view[bands] = scipy.fft.irfft2(self._spectrum[bands] * transfer, s=(rows, cols))
        self._views[key] = view
        return view

    def _world_shift(self, grid: GridSpec) -> tuple[float, float]:
        """The misregistration (dx, dy), given in `grid`'s CRS axes, in world-grid axes (m)."""
        cx = (grid.bounds[0] + grid.bounds[2]) / 2.0
        cy = (grid.bounds[1] + grid.bounds[3]) / 2.0
        xs = np.array([cx, cx + self.shift[0]])
        ys = np.array([cy, cy + self.shift[1]])
        wx, wy = transform_points(xs, ys, grid.epsg, self.world.layout.grid.epsg)
        return float(wx[1] - wx[0]), float(wy[1] - wy[0])

    def valid(self, grid: GridSpec) -> NDArray[np.bool_]:
        """Data mask at pixel centres (image frame, so not shifted)."""
        x, y = self._points(grid, 1)
        ok = self.acq.swath.inside(x, y)
        if self.acq.slc_off:
            ok &= ~self.acq.swath.slc_gaps(x, y, self.acq.slc_phase_lines)
        return ok

    def _points(self, grid: GridSpec, k: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Centres of `grid`'s pixels split k x k, in the main zone. Cached: a 20 m grid split
        2 x 2 has the same points as the 10 m grid of the same extent."""
        key = (grid.epsg, grid.bounds, grid.resolution / k)
        if key not in self._points_cache:
            self._points_cache[key] = mesh_in(grid, k, self.world.layout.grid.epsg)
        return self._points_cache[key]

    def _samples(self, grid: GridSpec, k: int) -> _Samples:
        """World-grid interpolator at `_points(grid, k)` and the sky there (shifted)."""
        key = (grid.epsg, grid.bounds, grid.resolution / k)
        if key not in self._samples_cache:
            wgrid = self.world.layout.grid
            x, y = self._points(grid, k)
            rows = (wgrid.bounds[3] - y) / wgrid.resolution - 0.5
            cols = (x - wgrid.bounds[0]) / wgrid.resolution - 0.5
            dx, dy = self._world_shift(grid)
            self._samples_cache[key] = (
                Bilinear(rows, cols, wgrid.shape),
                self.sky.sample(x - dx, y - dy),
            )
        return self._samples_cache[key]

    def render_grid(self, grid: GridSpec) -> RenderedGrid:
        """Noise-free reflectance of the assets at `grid`'s resolution, and the sky on it."""
        wgrid = self.world.layout.grid
        k = 1 if grid.resolution <= wgrid.resolution else 2
        sample, (opacity, shadow, cirrus) = self._samples(grid, k)
        dx, dy = self._world_shift(grid)
        view = self._sensor_view(grid.resolution, (dx / wgrid.resolution, -dy / wgrid.resolution))
        valid = self.valid(grid)
        reflectance: dict[str, NDArray[np.float32]] = {}
        for index, asset in enumerate(self.assets):
            if asset.resolution != round(grid.resolution):
                continue
            wavelength = RESPONSE[self.acq.platform][asset.asset][0] / 1000.0
            ground = sample(view[index])
            shaded = ground * (1.0 - shadow * (1.0 - _diffuse_fraction(wavelength)))
            seen = (
                (1.0 - opacity) * shaded
                + opacity * self.cloud[index]
                + cirrus * _cirrus_factor(wavelength)
            )
            if self.acq.gain:  # calibration, BRDF-like gain and residual haze
                path = _haze_path(self.acq.haze, wavelength)
                seen = seen * np.float32(self.acq.gain[index]) + np.float32(
                    self.acq.offset[index] + path
                )
            pixel = _block_mean(seen, k)
            reflectance[asset.asset] = np.where(valid, pixel, np.float32(np.nan))
        return RenderedGrid(
            grid=grid,
            reflectance=reflectance,
            valid=valid,
            opacity=_block_mean(opacity, k),
            shadow=_block_mean(shadow, k),
            cirrus=_block_mean(cirrus, k),
        )

    def render_item(self, spec: ItemSpec) -> RenderedItem:
        """All grids of one item, its truth cloud mask and its product quality layer."""
        grids = tuple(self.render_grid(g) for g in spec.grids)
        finest, coarsest = grids[0], grids[-1]
        truth = truth_classes(finest.opacity, finest.shadow, finest.cirrus, finest.valid)
        k = round(coarsest.grid.resolution / finest.grid.resolution)

        def at_quality_grid(asset: str) -> NDArray[np.float32]:
            values = finest.reflectance[asset]
            return _block_mean(np.nan_to_num(values), k) if k > 1 else np.nan_to_num(values)

        nir_asset = "nir" if "nir" in finest.reflectance else "nir08"
        # Snow is looked for (NDSI) only where the scene has some, so that a snowless
        # configuration classifies exactly as before snow existed.
        swir = np.nan_to_num(coarsest.reflectance["swir16"]) if self.acq.snow > 0 else None
        detection = detect(
            opacity=coarsest.opacity,
            shadow=coarsest.shadow,
            cirrus=coarsest.cirrus,
            valid=coarsest.valid,
            blue=at_quality_grid("blue"),
            green=at_quality_grid("green"),
            red=at_quality_grid("red"),
            nir=at_quality_grid(nir_asset),
            has_cirrus_band=self.acq.instrument in ("msi", "oli"),
            urban_commission=self.acq.instrument == "msi",
            rng=rng_for(self.config, "quality", spec.id),
            swir16=swir,
        )
        if self.acq.instrument == "msi":
            quality: NDArray[np.uint8] | NDArray[np.uint16] = encode_scl(detection)
        else:
            quality = encode_qa_pixel(detection, oli=self.acq.instrument == "oli")
        return RenderedItem(spec=spec, grids=grids, truth_mask=truth, quality=quality)


def render_acquisition(
    config: ArchiveConfig, world: World, acquisition: Acquisition, *, shifted: bool = True
) -> list[RenderedItem]:
    """Render every item of `acquisition` (noise-free). `shifted=False` renders the same scene
    without misregistration, as a reference for co-registration tests."""
    renderer = _Renderer(config, world, acquisition, shifted)
    return [renderer.render_item(spec) for spec in acquisition.items]
