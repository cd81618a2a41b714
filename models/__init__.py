"""eo-pipeline: models.

| module                 | what it holds                                                           |
|------------------------|-------------------------------------------------------------------------|
| `models.changenet`     | FC-Siam-diff change detection network (Daudt et al. 2018)               |
| `models.unet`          | U-Net built-up footprint network (Ronneberger et al. 2015)              |
| `models.dynamics`      | per-pixel GRU over annual composites, hazard formulation                |
| `models.blocks`        | convolution blocks shared by the two CNNs                               |
| `models.features`      | spectral indices and model input channels (bands + indices)             |
| `models.baselines`     | classical, training-free baselines (CVA + Otsu, NDBI rule, breakpoint)  |
| `models.calibration`   | expected calibration error, temperature fitting                         |
| `models.spec`          | the weights spec that travels with every checkpoint                     |
| `models.registry`      | architecture names -> classes; weights name -> spec + file; checks      |
| `models.errors`        | exceptions of the model layer                                           |

Importing this package imports nothing heavy: import the module you need. Training code lives
in `models.training` and is never imported by the registry or by the inference stage.
"""
