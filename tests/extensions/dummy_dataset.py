"""A dataset: the embedded textures restricted to one category (a _target_, no _module_ needed)."""

from anomaly_attn.data.textures import Textures


class GrassOnly(Textures):
    def categories(self) -> list[str]:
        return ["grass"]
