"""Generated test images: handwritten numbers and sudoku grids on paper, with known truth.

Handwriting comes from the MNIST *test* set (never trained on), printed digits from
fonts training never saw (engine_build.fonts.HELD_OUT_FAMILIES).
"""

import cv2
import numpy as np

from engine_build import fonts


def paper(rng, width, height):
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * rng.uniform(20, 50)
    sheet = rng.uniform(185, 225) + gradient - gradient.mean()
    return sheet + cv2.GaussianBlur(rng.normal(0, 5, (height, width)).astype(np.float32), (3, 3), 0)


def ink(sheet, glyph, x, y, darkness):
    """Darken ``sheet`` with a bright-on-dark glyph at (x, y), clipped to the sheet."""
    h, w = glyph.shape
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(sheet.shape[1], x + w), min(sheet.shape[0], y + h)
    if x1 <= x0 or y1 <= y0:
        return
    alpha = glyph[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.float32) / 255.0 * darkness
    region = sheet[y0:y1, x0:x1]
    np.minimum(region, region * (1 - alpha) + 35 * alpha, out=region)


def mnist_glyph(image28, height):
    x, y, w, h = cv2.boundingRect(image28)
    digit = image28[y : y + h, x : x + w]
    scale = height / float(h)
    return cv2.resize(digit, (max(1, int(w * scale)), height), interpolation=cv2.INTER_CUBIC)


def photographed(sheet, rng, margins=True):
    """What a phone adds to a sheet of paper: vignetting, light falling off to one side, a soft
    shadow (a hand, the phone) and, with ``margins``, the dark table beside the page."""
    height, width = sheet.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = ((xx / width - 0.5) ** 2 + (yy / height - 0.5) ** 2) / 0.5
    sheet = sheet * (1.0 - rng.uniform(0.0, 0.35) * radius)
    if rng.random() < 0.4:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        axes = (rng.uniform(0.15, 0.5) * width, rng.uniform(0.3, 0.9) * height)
        inside = ((xx - cx) / axes[0]) ** 2 + ((yy - cy) / axes[1]) ** 2 < 1.0
        shade = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), rng.uniform(3, 12))
        sheet = sheet * (1.0 - rng.uniform(0.2, 0.45) * shade)
    if margins and rng.random() < 0.5:
        table = np.zeros((height, width), np.float32)
        for side in rng.choice(4, int(rng.integers(1, 3)), replace=False):
            band = int(rng.uniform(0.03, 0.08) * (width if side < 2 else height))
            if side == 0:
                table[:, :band] = 1
            elif side == 1:
                table[:, width - band :] = 1
            elif side == 2:
                table[:band, :] = 1
            else:
                table[height - band :, :] = 1
        table = cv2.GaussianBlur(table, (0, 0), 1.5)
        sheet = sheet * (1 - table) + rng.uniform(20, 80) * table
    return sheet


def finish(sheet, rng, max_rotation=3.0, margins=True):
    height, width = sheet.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-max_rotation, max_rotation), 1.0)
    sheet = cv2.warpAffine(sheet, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    sheet = photographed(sheet, rng, margins)
    sheet = sheet + rng.normal(0, rng.uniform(2, 6), sheet.shape)
    sheet = cv2.GaussianBlur(np.clip(sheet, 0, 255).astype(np.uint8), (3, 3), rng.uniform(0.3, 1.0))
    ok, encoded = cv2.imencode(".jpg", sheet, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 95))])
    sheet = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE) if ok else sheet
    return cv2.cvtColor(sheet, cv2.COLOR_GRAY2BGR)


def number_image(rng, images, labels):
    """A 3-8 digit handwritten number: varied spacing (sometimes touching), jittered baseline."""
    count = int(rng.integers(3, 9))
    picks = rng.integers(0, len(images), count)
    height = int(rng.integers(50, 90))
    glyphs = [mnist_glyph(images[i], height) for i in picks]
    gaps = [int(rng.integers(-3, 2)) if rng.random() < 0.15 else int(rng.integers(4, 28)) for _ in glyphs]
    width = sum(g.shape[1] for g in glyphs) + sum(gaps) + 120
    sheet = paper(rng, max(width, 320), height + 120)
    x = 60
    for glyph, gap in zip(glyphs, gaps):
        ink(sheet, glyph, x, 60 + int(rng.integers(-6, 7)), rng.uniform(0.75, 0.95))
        x += glyph.shape[1] + gap
    return finish(sheet, rng), "".join(str(labels[i]) for i in picks)


def bold_marker_page(rng, images, labels):
    """Three MNIST digits 100 px tall in a bold marker (dilated by 7 px: strokes about 15 px)
    on a 420 x 200 px page, dark on light; returns (page, truth)."""
    sheet = paper(rng, 420, 200)
    x, truth = 60, ""
    for index in rng.integers(0, 1000, 3):
        glyph = cv2.dilate(mnist_glyph(images[int(index)], 100), np.ones((7, 7), np.uint8))
        ink(sheet, glyph, x, 50, 0.9)
        x += glyph.shape[1] + 15
        truth += str(labels[int(index)])
    return np.clip(sheet, 0, 255).astype(np.uint8), truth


def printed_glyph(font_path, digit, height, rng):
    glyph = fonts.render_glyph(font_path, digit, size=int(height * 1.4))
    scale = height / float(glyph.shape[0])
    return cv2.resize(glyph, (max(1, int(glyph.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)


def sudoku_image(rng, images, labels, font_paths, cell=52, empty_fraction=0.5, rows=9, cols=9, box=3):
    """A rows x cols grid (a sudoku by default: thick lines every ``box`` cells) with printed
    lines, MNIST and font digits, empty cells, slight perspective; returns (image, truth)."""
    width, height = cols * cell + 140, rows * cell + 140
    sheet = paper(rng, width, height)
    origin = 70
    truth = [[None] * cols for _ in range(rows)]
    for row in range(rows):
        for col in range(cols):
            if rng.random() < empty_fraction:
                continue
            if not font_paths or rng.random() < 0.5:  # no fonts: handwriting only
                index = int(rng.integers(0, len(images)))
                glyph, digit = (
                    mnist_glyph(images[index], int(cell * rng.uniform(0.55, 0.7))),
                    int(labels[index]),
                )
            else:
                digit = int(rng.integers(1, 10))
                glyph = printed_glyph(
                    font_paths[int(rng.integers(0, len(font_paths)))], digit, int(cell * 0.6), rng
                )
            x = origin + col * cell + (cell - glyph.shape[1]) // 2 + int(rng.integers(-3, 4))
            y = origin + row * cell + (cell - glyph.shape[0]) // 2 + int(rng.integers(-3, 4))
            ink(sheet, glyph, x, y, 0.9)
            truth[row][col] = digit
    for i in range(rows + 1):
        position = origin + i * cell
        cv2.line(sheet, (origin, position), (origin + cols * cell, position), 40, 4 if i % box == 0 else 1)
    for i in range(cols + 1):
        position = origin + i * cell
        cv2.line(sheet, (position, origin), (position, origin + rows * cell), 40, 4 if i % box == 0 else 1)
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    moved = corners + rng.uniform(-18, 18, (4, 2)).astype(np.float32)
    transform = cv2.getPerspectiveTransform(corners, moved)
    sheet = cv2.warpPerspective(sheet, transform, (width, height), borderMode=cv2.BORDER_REPLICATE)
    return finish(sheet, rng, max_rotation=2.0), truth


def printed_crop(rng, font_path, digit):
    """A printed digit as a camera crop: dark on paper, 100-160 px."""
    side = int(rng.integers(100, 160))
    sheet = paper(rng, side, side)
    glyph = printed_glyph(font_path, digit, int(side * rng.uniform(0.45, 0.7)), rng)
    ink(
        sheet,
        glyph,
        (side - glyph.shape[1]) // 2 + int(rng.integers(-8, 9)),
        (side - glyph.shape[0]) // 2 + int(rng.integers(-8, 9)),
        rng.uniform(0.8, 0.95),
    )
    return finish(sheet, rng, max_rotation=4.0, margins=False)


def paper_crop(digit28, size=200, ink=40, paper=215, digit_size=120, offset=(0, 0)):
    """A MNIST digit drawn as dark ink on light paper, like a camera crop."""
    crop = np.full((size, size), paper, np.float32)
    scaled = cv2.resize(digit28, (digit_size, digit_size), interpolation=cv2.INTER_CUBIC) / 255.0
    alpha = np.clip(scaled, 0, 1)
    y0 = (size - digit_size) // 2 + offset[1]
    x0 = (size - digit_size) // 2 + offset[0]
    region = crop[y0 : y0 + digit_size, x0 : x0 + digit_size]
    region[:] = region * (1 - alpha) + ink * alpha
    return np.clip(crop, 0, 255).astype(np.uint8)


def photo(digit28, size=(1200, 900), dark_on_light=True):
    """A large 'photo': paper with a lighting gradient and the digit in the middle."""
    width, height = size
    sheet = np.tile(np.linspace(190, 230, width, dtype=np.float32), (height, 1))
    crop = paper_crop(digit28, size=400, digit_size=300).astype(np.float32)
    y0, x0 = (height - 400) // 2, (width - 400) // 2
    sheet[y0 : y0 + 400, x0 : x0 + 400] = np.minimum(sheet[y0 : y0 + 400, x0 : x0 + 400], crop)
    image = np.clip(sheet, 0, 255).astype(np.uint8)
    return image if dark_on_light else 255 - image


def centre_digit_frames(mnist_test, count, start=0):
    """640x480 frames of paper with one MNIST digit in the centre square; and their labels."""
    images, labels = mnist_test
    out = []
    for index in range(start, start + count):
        frame = np.full((480, 640), 215, np.uint8)
        frame[140:340, 220:420] = paper_crop(images[index])
        out.append(frame)
    return out, [int(v) for v in labels[start : start + count]]


def two_digit_frame(mnist_test, first=0, second=1):
    """A 640x480 frame of paper with two MNIST digits side by side; their labels and the boxes
    (x, y, w, h) around them: a fixed scene for the setup page."""
    images, labels = mnist_test
    frame = np.full((480, 640), 215, np.uint8)
    boxes = [(100, 140, 200, 200), (340, 140, 200, 200)]
    for index, (x, y, w, h) in zip((first, second), boxes):
        frame[y : y + h, x : x + w] = paper_crop(images[index])
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), [int(labels[first]), int(labels[second])], boxes


def tall_digit(digit, height=96, width=60, ink=20, paper=230):
    """A digit filling a tall box, as a meter's drum shows it in its window."""
    image = np.full((height, width), paper, np.uint8)
    scale = (height * 0.7) / cv2.getTextSize(str(digit), cv2.FONT_HERSHEY_DUPLEX, 1.0, 2)[0][1]
    thickness = max(2, int(scale * 1.2))
    (w, h), _ = cv2.getTextSize(str(digit), cv2.FONT_HERSHEY_DUPLEX, scale, thickness)
    origin = ((width - w) // 2, (height + h) // 2)
    cv2.putText(image, str(digit), origin, cv2.FONT_HERSHEY_DUPLEX, scale, ink, thickness, cv2.LINE_AA)
    return image
