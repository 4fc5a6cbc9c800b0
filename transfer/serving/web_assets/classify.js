// The model in the browser: onnxruntime-web runs the run's checked ONNX export on pictures
// prepared as the studio prepares them (prepare.js). Used by the studio's live camera view and
// by the "web page" export; nothing here talks to a server.
import * as ort from "./ort/ort.wasm.min.mjs";
import { Picture, draftScale, modelInput, modelView, shrinkByBlocks } from "./prepare.js";

const PROBABILITIES = "probabilities";
const NOVELTY = "novelty";

/** A ready model: ``classify`` takes an RGB Picture and gives the answer the studio would give. */
export class Classifier {
  constructor(session, info) {
    this.session = session;
    this.info = info;
    this.classes = info.classes;
    this.preprocessing = info.preprocessing;
    this.inputName = session.inputNames[0];
    this.threshold = unknownThreshold(info);
    this.scoresNovelty = session.outputNames.includes(NOVELTY) && this.threshold !== null;
    // Below this margin between the two likeliest classes the answer is "not sure: a or b" (measured by
    // the studio on the run's validation answers); null in a model.json written before it.
    this.unsureMargin = typeof info.unsure_margin === "number" ? info.unsure_margin : null;
  }

  /** The answer for one picture: every class's probability (best first), and novelty when the model has it. */
  async classify(picture) {
    const view = modelView(picture, this.preprocessing);
    const size = this.preprocessing.input_size;
    const input = new ort.Tensor("float32", modelInput(view, this.preprocessing), [1, 3, size, size]);
    const outputs = await this.session.run({ [this.inputName]: input });
    const probabilities = outputs[PROBABILITIES] ? outputs[PROBABILITIES].data : outputs[this.session.outputNames[0]].data;
    const ranked = Array.from(probabilities, (p, i) => ({ label: this.classes[i], probability: p }))
      .sort((a, b) => b.probability - a.probability);
    const answer = { label: ranked[0].label, probability: ranked[0].probability, top_k: ranked, unknown: false, novelty: null };
    if (this.scoresNovelty && outputs[NOVELTY]) {
      answer.novelty = Number(outputs[NOVELTY].data[0]);
      answer.unknown = answer.novelty > this.threshold;
    }
    answer.unsure = unsurePair(ranked, this.unsureMargin, answer.unknown);
    return answer;
  }
}

/** The two classes a close call hesitates between, or null ("None of these" is a different answer). */
export function unsurePair(ranked, margin, unknown) {
  if (unknown || margin === null || ranked.length < 2) return null;
  return ranked[0].probability - ranked[1].probability < margin ? [ranked[0].label, ranked[1].label] : null;
}

/**
 * The novelty above which a picture is "None of these", from model.json (the model's normal
 * setting); null when the model was trained without novelty.
 */
export function unknownThreshold(info) {
  const novelty = info.novelty;
  if (!novelty || typeof novelty !== "object") return null;
  const setting = info.unknown_setting || "normal";
  if (novelty.thresholds && typeof novelty.thresholds[setting] === "number") return novelty.thresholds[setting];
  if (typeof novelty.threshold === "number") return novelty.threshold;
  return null;
}

/** Loads onnxruntime-web's WebAssembly from the folder beside this file and opens the model. */
export async function openClassifier(modelBytes, info) {
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  // Several threads need a cross-origin-isolated page (SharedArrayBuffer); otherwise one.
  ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const session = await ort.InferenceSession.create(modelBytes, {
    executionProviders: ["wasm"],
    graphOptimizationLevel: "all",
  });
  return new Classifier(session, info);
}

/** A picture file (JPEG, PNG, WebP, GIF, BMP) as the studio reads it: EXIF orientation applied,
 * a large JPEG shrunk as Pillow's reduced-scale decoding does. */
export async function pictureFromFile(file, preprocessing) {
  const bitmap = await createImageBitmap(file, {
    imageOrientation: "from-image",
    colorSpaceConversion: "none",  // Pillow ignores colour profiles: so do we
    premultiplyAlpha: "none",
  });
  let picture = pictureFromSource(bitmap, bitmap.width, bitmap.height);
  bitmap.close();
  if (await isJpeg(file)) {
    const scale = draftScale(picture.width, picture.height, preprocessing.resize_size);
    if (scale > 1) picture = shrinkByBlocks(picture, scale, scale);
  }
  return picture;
}

async function isJpeg(file) {
  const head = new Uint8Array(await file.slice(0, 3).arrayBuffer());
  return head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
}

let scratch = null;

/** The pixels of an ImageBitmap, a video or a canvas as an RGB Picture. */
export function pictureFromSource(source, width, height) {
  if (!scratch || scratch.width !== width || scratch.height !== height) {
    scratch = new OffscreenCanvas(width, height);
  }
  const context = scratch.getContext("2d", { willReadFrequently: true });
  context.drawImage(source, 0, 0, width, height);
  return Picture.fromRGBA(context.getImageData(0, 0, width, height).data, width, height);
}
