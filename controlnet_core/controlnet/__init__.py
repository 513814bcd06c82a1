"""ControlNet: a trainable copy of the UNet encoder whose zero convolutions add residuals to the
UNet's skip connections and middle block (original, diffusers and diff layouts; SD1.x/SD2.x/SDXL)."""
