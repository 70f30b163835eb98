"""A contact sheet: a few train images upscaled, expert boxes in green, crowd boxes coloured by noise type."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from synth.records import DatasetView

EXPERT_COLOUR = (0, 220, 0)
NOISE_COLOURS: dict[str, tuple[int, int, int]] = {
    "clean": (0, 160, 255),
    "background": (255, 40, 40),
    "localization": (255, 170, 0),
    "box_in_box": (220, 0, 220),
    "bib_inner": (0, 230, 230),
}


def render_contact_sheet(
    dataset: DatasetView, out_path: str | Path, n: int = 6, *, tile: int = 384, split: str = "train"
) -> Path:
    """Draw ``n`` images of ``split`` in a grid (3 per row) with a legend; returns ``out_path``.

    Expert boxes are green and drawn first; crowd boxes are drawn 1 px inside, coloured by true noise type;
    missed deposits get a dashed-looking (dotted) green outline.
    """
    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    records = dataset.split(split)[:n]
    if not records:
        raise ValueError(f"split: no {split!r} images to draw")
    cols = min(3, len(records))
    rows = (len(records) + cols - 1) // cols
    legend_h = 28
    sheet = Image.new("RGB", (cols * tile, rows * tile + legend_h), (30, 30, 30))
    font = ImageFont.load_default()
    for k, record in enumerate(records):
        img = Image.fromarray(dataset.pixels(record), mode="L").resize((tile, tile), Image.Resampling.BICUBIC)
        img = img.convert("RGB")
        draw = ImageDraw.Draw(img)
        sx, sy = tile / record.width, tile / record.height
        for i, box in enumerate(record.expert.xyxy):
            xy = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
            draw.rectangle(xy, outline=EXPERT_COLOUR, width=1 if i in set(record.missed.tolist()) else 2)
        for box, noise in zip(record.crowd.xyxy, record.crowd_noise, strict=True):
            xy = [box[0] * sx + 2, box[1] * sy + 2, box[2] * sx - 2, box[3] * sy - 2]
            if xy[2] > xy[0] and xy[3] > xy[1]:
                draw.rectangle(xy, outline=NOISE_COLOURS[str(noise)], width=2)
        draw.text((4, 4), f"{record.key} ({len(record.missed)} missed)", fill=(255, 255, 0), font=font)
        sheet.paste(img, ((k % cols) * tile, (k // cols) * tile))
    draw = ImageDraw.Draw(sheet)
    x = 6
    y = rows * tile + 8
    for name, colour in [("expert", EXPERT_COLOUR), *NOISE_COLOURS.items()]:
        draw.rectangle([x, y, x + 12, y + 12], outline=colour, width=2)
        draw.text((x + 16, y), name, fill=(230, 230, 230), font=font)
        x += 24 + int(draw.textlength(name, font=font))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_path)
    return out_path
