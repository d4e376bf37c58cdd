"""Probing the frozen backbone: features of every image computed once and cached on disk (`features`,
`feature_cache`), the linear-probe baseline on them (`linear_probe`), and the stage-wise probe that scores every
backbone stage (`stage_probe`). Nothing here trains the backbone; the recipe advisor reads what these measure."""
