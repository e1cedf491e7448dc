"""PHH3 reference standard (Tellez et al., section III): mitotic candidates in a PHH3 (DAB)
restain and their registration onto the H&E section, as training labels for the mitosis CNN.
Sits beside mitosis/ in the data flow: it reads slides, uses the stain module's colour
deconvolution and writes point tables (CSV + GeoJSON) that ``histoscope train mitosis`` users
can turn into patches."""

from .candidates import DEFAULT_DAB_THRESHOLD, candidate_patches, dab_candidates, write_candidates, write_patch_folder
from .registration import GlobalShift, RegistrationError, global_shift, local_shift, register_points, shared_channel

__all__ = [
    "DEFAULT_DAB_THRESHOLD",
    "GlobalShift",
    "RegistrationError",
    "candidate_patches",
    "dab_candidates",
    "global_shift",
    "local_shift",
    "register_points",
    "shared_channel",
    "write_candidates",
    "write_patch_folder",
]
