// A picture's preparation for the model, as Transfer Studio does it in Python
// (transfer/data/picture.py: open_picture, resize_short_side, centre_square, model_input).
//
// The browser decodes the picture (EXIF orientation applied); everything after decoding is done
// here on plain RGBA bytes so the numbers match Pillow's: a JPEG's reduced-scale decoding
// (Pillow's draft) is imitated by averaging blocks, the short side is resized with Pillow's
// own separable filters in its 8-bit fixed-point arithmetic (horizontal pass first, rounded to
// bytes, then vertical), large reductions first shrink by whole factors as Pillow's
// reducing_gap does, then the centre crop and the normalisation with float32 factors.

const PRECISION_BITS = 32 - 8 - 2;
const MAX_ASPECT = 4.0;
const REDUCING_GAP = 3.0;

const FILTERS = {
  box: { support: 0.5, f: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
  bilinear: { support: 1.0, f: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
  hamming: {
    support: 1.0,
    f: (x) => {
      x = Math.abs(x);
      if (x === 0.0) return 1.0;
      if (x >= 1.0) return 0.0;
      x *= Math.PI;
      return (Math.sin(x) / x) * (0.54 + 0.46 * Math.cos(x));
    },
  },
  bicubic: {
    support: 2.0,
    f: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
  lanczos: {
    support: 3.0,
    f: (x) => (x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0),
  },
};

function sinc(x) {
  if (x === 0.0) return 1.0;
  x *= Math.PI;
  return Math.sin(x) / x;
}

/** An RGB picture: width x height pixels, 3 bytes each. */
export class Picture {
  constructor(width, height, data) {
    this.width = width;
    this.height = height;
    this.data = data || new Uint8Array(width * height * 3);
  }

  static fromRGBA(rgba, width, height) {
    const data = new Uint8Array(width * height * 3);
    for (let i = 0, j = 0; j < data.length; i += 4, j += 3) {
      const alpha = rgba[i + 3];
      if (alpha === 255) {
        data[j] = rgba[i]; data[j + 1] = rgba[i + 1]; data[j + 2] = rgba[i + 2];
      } else {  // transparency is composited on white, as the studio does
        for (let c = 0; c < 3; c++) data[j + c] = Math.round((rgba[i + c] * alpha + 255 * (255 - alpha)) / 255);
      }
    }
    return new Picture(width, height, data);
  }

  crop(left, top, width, height) {
    const out = new Picture(width, height);
    for (let y = 0; y < height; y++) {
      const from = ((top + y) * this.width + left) * 3;
      out.data.set(this.data.subarray(from, from + width * 3), y * width * 3);
    }
    return out;
  }
}

/** Pillow's JPEG draft scale: the largest of 8, 4, 2 that keeps both sides at least ``wanted``. */
export function draftScale(width, height, wanted) {
  const scale = Math.min(Math.floor(width / wanted), Math.floor(height / wanted));
  for (const candidate of [8, 4, 2]) if (scale >= candidate) return candidate;
  return 1;
}

/** Block averages of ``factor x factor`` pixels (the last row and column average what is there). */
export function shrinkByBlocks(picture, factorX, factorY) {
  const width = Math.ceil(picture.width / factorX), height = Math.ceil(picture.height / factorY);
  const out = new Picture(width, height);
  for (let y = 0; y < height; y++) {
    const y0 = y * factorY, y1 = Math.min(picture.height, y0 + factorY);
    for (let x = 0; x < width; x++) {
      const x0 = x * factorX, x1 = Math.min(picture.width, x0 + factorX);
      const count = (x1 - x0) * (y1 - y0);
      const multiplier = Math.trunc(Math.fround(4294967296 / Math.fround(256 * count)));
      const amend = Math.floor(count / 2);
      for (let c = 0; c < 3; c++) {
        let sum = 0;
        for (let yy = y0; yy < y1; yy++) {
          for (let xx = x0; xx < x1; xx++) sum += picture.data[(yy * picture.width + xx) * 3 + c];
        }
        out.data[(y * width + x) * 3 + c] = Math.min(255, Math.floor(((sum + amend) * multiplier) / 16777216));
      }
    }
  }
  return out;
}

/** Pillow's precompute_coeffs and normalize_coeffs_8bpc for one axis. */
function coefficients(inSize, in0, in1, outSize, filter) {
  const scale = (in1 - in0) / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = filter.support * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const centre = in0 + (xx + 0.5) * scale;
    let xmin = Math.trunc(centre - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(centre + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let total = 0.0;
    const row = xx * ksize;
    for (let x = 0; x < xmax; x++) {
      const w = filter.f((x + xmin - centre + 0.5) / filterScale);
      weights[row + x] = w;
      total += w;
    }
    if (total !== 0.0) for (let x = 0; x < xmax; x++) weights[row + x] /= total;
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  const fixed = new Int32Array(weights.length);
  for (let i = 0; i < weights.length; i++) {
    const w = weights[i] * (1 << PRECISION_BITS);
    fixed[i] = Math.trunc(weights[i] < 0 ? w - 0.5 : w + 0.5);
  }
  return { ksize, bounds, fixed };
}

function clip8(value) {
  if (value >= (1 << PRECISION_BITS) * 256) return 255;
  if (value <= 0) return 0;
  return Math.floor(value / (1 << PRECISION_BITS));
}

/**
 * Pillow's Image.resize(size, filter, box) for an RGB picture, computing only the output
 * columns [keepX0, keepX1) and rows [keepY0, keepY1) (the crop the model will see: the rest
 * would be thrown away, and every kept pixel is exactly what the full resize gives).
 */
function resample(picture, outW, outH, filter, box, keep) {
  const [bx0, by0, bx1, by1] = box;
  const needH = outW !== picture.width || bx0 !== 0 || bx1 !== outW;
  const needV = outH !== picture.height || by0 !== 0 || by1 !== outH;
  const horizontal = coefficients(picture.width, bx0, bx1, outW, filter);
  const vertical = coefficients(picture.height, by0, by1, outH, filter);
  let source = picture, rowOffset = 0;
  const cols = needH ? [keep.x0, keep.x1] : [keep.x0, keep.x1];
  if (needH) {
    // Rows of the source that the kept output rows read.
    const first = needV ? vertical.bounds[keep.y0 * 2] : keep.y0;
    const lastRow = needV ? vertical.bounds[(keep.y1 - 1) * 2] + vertical.bounds[(keep.y1 - 1) * 2 + 1] : keep.y1;
    const width = cols[1] - cols[0];
    const temp = new Picture(width, lastRow - first);
    const half = 1 << (PRECISION_BITS - 1);
    for (let y = first; y < lastRow; y++) {
      for (let xx = cols[0]; xx < cols[1]; xx++) {
        const xmin = horizontal.bounds[xx * 2], xmax = horizontal.bounds[xx * 2 + 1];
        const k = xx * horizontal.ksize;
        let s0 = half, s1 = half, s2 = half;
        let p = (y * picture.width + xmin) * 3;
        for (let x = 0; x < xmax; x++, p += 3) {
          const w = horizontal.fixed[k + x];
          s0 += picture.data[p] * w; s1 += picture.data[p + 1] * w; s2 += picture.data[p + 2] * w;
        }
        const o = ((y - first) * width + (xx - cols[0])) * 3;
        temp.data[o] = clip8(s0); temp.data[o + 1] = clip8(s1); temp.data[o + 2] = clip8(s2);
      }
    }
    source = temp;
    rowOffset = first;
  } else {
    source = picture.crop(keep.x0, 0, keep.x1 - keep.x0, picture.height);
  }
  const width = keep.x1 - keep.x0, height = keep.y1 - keep.y0;
  if (!needV) return source.crop(0, keep.y0 - rowOffset, width, height);
  const out = new Picture(width, height);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = keep.y0; yy < keep.y1; yy++) {
    const ymin = vertical.bounds[yy * 2] - rowOffset, ymax = vertical.bounds[yy * 2 + 1];
    const k = yy * vertical.ksize;
    for (let xx = 0; xx < width; xx++) {
      let s0 = half, s1 = half, s2 = half;
      for (let y = 0; y < ymax; y++) {
        const w = vertical.fixed[k + y];
        const p = ((ymin + y) * source.width + xx) * 3;
        s0 += source.data[p] * w; s1 += source.data[p + 1] * w; s2 += source.data[p + 2] * w;
      }
      const o = ((yy - keep.y0) * width + xx) * 3;
      out.data[o] = clip8(s0); out.data[o + 1] = clip8(s1); out.data[o + 2] = clip8(s2);
    }
  }
  return out;
}

/** Pillow's NEAREST resize of ``box``: its affine transform in 16.16 fixed point (the pixel
 * under each output pixel's centre), computing only the kept window. */
function nearest(picture, outW, outH, box, keep) {
  const fix = (v) => Math.floor(v * 65536.0 + 0.5);
  const scaleX = (box[2] - box[0]) / outW, scaleY = (box[3] - box[1]) / outH;
  const stepX = fix(scaleX), startX = fix(box[0] + scaleX * 0.5);
  const stepY = fix(scaleY), startY = fix(box[1] + scaleY * 0.5);
  const out = new Picture(keep.x1 - keep.x0, keep.y1 - keep.y0);
  for (let y = keep.y0; y < keep.y1; y++) {
    const yin = Math.floor((startY + y * stepY) / 65536);
    for (let x = keep.x0; x < keep.x1; x++) {
      const xin = Math.floor((startX + x * stepX) / 65536);
      if (xin < 0 || xin >= picture.width || yin < 0 || yin >= picture.height) continue;
      const from = (yin * picture.width + xin) * 3, to = ((y - keep.y0) * out.width + (x - keep.x0)) * 3;
      out.data[to] = picture.data[from]; out.data[to + 1] = picture.data[from + 1]; out.data[to + 2] = picture.data[from + 2];
    }
  }
  return out;
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(value) {
  const floor = Math.floor(value), diff = value - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Pillow's _get_safe_box: the source pixels a resize of ``box`` to ``size`` reads. */
function safeBox(picture, outW, outH, filter, box) {
  const support = filter.support - 0.5;
  const supportX = support * ((box[2] - box[0]) / outW), supportY = support * ((box[3] - box[1]) / outH);
  return [Math.max(0, Math.trunc(box[0] - supportX)), Math.max(0, Math.trunc(box[1] - supportY)),
    Math.min(picture.width, Math.ceil(box[2] + supportX)), Math.min(picture.height, Math.ceil(box[3] + supportY))];
}

/**
 * The central ``input_size`` square of ``picture`` with its short side resized to
 * ``resize_size`` (transfer.data.picture.resize_short_side, centre_square and the crop of
 * model_input), as RGB bytes.
 */
export function modelView(picture, preprocessing) {
  const side = preprocessing.resize_size, size = preprocessing.input_size;
  const name = String(preprocessing.interpolation || "bilinear").toLowerCase();
  const filter = FILTERS[name];
  if (!filter && name !== "nearest") throw new Error(`unknown interpolation ${preprocessing.interpolation}`);
  let { width, height } = picture;
  let short = Math.min(width, height);
  const long = Math.max(width, height);
  if (long > short * MAX_ASPECT) {
    const keepSide = Math.max(1, Math.trunc(short * MAX_ASPECT));
    const left = width > height ? Math.floor((width - keepSide) / 2) : 0;
    const top = height > width ? Math.floor((height - keepSide) / 2) : 0;
    picture = picture.crop(left, top, Math.min(width, keepSide), Math.min(height, keepSide));
    ({ width, height } = picture);
    short = Math.min(width, height);
  }
  let outW = width, outH = height;
  const scale = side / short;
  if (short !== side) {
    if (width <= height) { outW = side; outH = Math.max(side, roundHalfEven(height * scale)); }
    else { outW = Math.max(side, roundHalfEven(width * scale)); outH = side; }
  }
  // centre_square, then the centre crop of model_input
  const offset = Math.floor((side - size) / 2);
  const left = Math.floor((outW - side) / 2) + offset, top = Math.floor((outH - side) / 2) + offset;
  const keep = { x0: left, x1: left + size, y0: top, y1: top + size };
  if (short === side) return picture.crop(left, top, size, size);
  let box = [0, 0, width, height];
  if (!filter) return nearest(picture, outW, outH, box, keep);
  if (scale < 1) {
    const factorX = Math.trunc(width / outW / REDUCING_GAP) || 1, factorY = Math.trunc(height / outH / REDUCING_GAP) || 1;
    if (factorX > 1 || factorY > 1) {
      const reduceBox = safeBox(picture, outW, outH, filter, box);
      const region = picture.crop(reduceBox[0], reduceBox[1], reduceBox[2] - reduceBox[0], reduceBox[3] - reduceBox[1]);
      picture = shrinkByBlocks(region, factorX, factorY);
      box = [(box[0] - reduceBox[0]) / factorX, (box[1] - reduceBox[1]) / factorY,
        (box[2] - reduceBox[0]) / factorX, (box[3] - reduceBox[1]) / factorY];
    }
  }
  return resample(picture, outW, outH, filter, box, keep);
}

/** Float32 per-channel factor and shift: ``x * factor - shift`` is ``(x / 255 - mean) / std``. */
export function normalisingFactors(mean, std) {
  return {
    factor: std.map((s) => Math.fround((1 / 255) / s)),
    shift: mean.map((m, i) => Math.fround(m / std[i])),
  };
}

/** The model's ``1 x 3 x size x size`` float32 input from the cropped RGB bytes. */
export function modelInput(view, preprocessing) {
  const { factor, shift } = normalisingFactors(preprocessing.mean, preprocessing.std);
  const plane = view.width * view.height;
  const out = new Float32Array(plane * 3);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) out[c * plane + i] = Math.fround(view.data[i * 3 + c] * factor[c]) - shift[c];
  }
  return out;
}
