"""Built-in network architectures, one module each, registered explicitly by name.

Each entry maps the ``architecture`` field of a model manifest to ``"module:Class"``; the module is
imported only when a model using it is built. Plugins name their own classes as ``"pkg.mod:Class"``
in their manifests instead.
"""

from __future__ import annotations

ARCHITECTURES: dict[str, str] = {
    "identity": "restore_app.core.archs.identity:Identity",
    "bilinear_demosaic": "restore_app.core.archs.bilinear_demosaic:BilinearDemosaic",
    "opencv_demosaic": "restore_app.core.archs.opencv_demosaic:OpenCVDemosaic",
    "bicubic": "restore_app.core.archs.bicubic:Bicubic",
    "he_watershed": "restore_app.core.archs.he_watershed:HEWatershed",
    "demosaic_net": "restore_app.core.archs.demosaic_net:DemosaicNet",
    "demosaic_net_int8": "restore_app.core.archs.demosaic_net:DemosaicNetInt8",
    "jpeg_unet": "restore_app.core.archs.jpeg_unet:JpegUNet",
    "jpeg_unet_int8": "restore_app.core.archs.jpeg_unet:JpegUNetInt8",
    "brcn": "restore_app.core.archs.brcn:BRCN",
    "recurrent_vsr": "restore_app.core.archs.vsr_net:RecurrentVSR",
    "dwt_net": "restore_app.core.archs.dwt_net:DWTNet",
    "dwt_net_int8": "restore_app.core.archs.dwt_net:DWTNetInt8",
}
