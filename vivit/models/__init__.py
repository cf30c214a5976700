"""ViViT models: `build_model(config)` and the model configs."""
from vivit.models.configs import (default_model_config, get_model_config, vivit_b_16x2,
                                  vivit_b_16x2_fe, vivit_l_16x2_fe)
from vivit.models.vivit import (FactorisedEncoderViViT, ViViT, build_model,
                                embedded_frames, pixels_to_unit_range, token_grid,
                                validate_model_config)
from vivit.models.params import check_params, init_params, param_shapes
