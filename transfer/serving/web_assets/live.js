// What the live camera view and the web page share: top-k bars, the #result element automated
// checks read, and a camera whose frames are classified one after another on this device.
import { pictureFromSource } from "./classify.js";

export const NONE_OF_THESE = "None of these";

/** The top-k answer as bars (the most likely first); an unknown picture reads "None of these". */
export function renderAnswer(container, answer, topK) {
  container.replaceChildren();
  if (answer.unknown) {
    const note = document.createElement("div");
    note.className = "unknown";
    note.textContent = `${NONE_OF_THESE}: looks unlike every class; closest: ${answer.label} ${percent(answer.probability)}`;
    container.append(note);
  } else if (answer.unsure) {
    const note = document.createElement("div");
    note.className = "unsure";
    note.textContent = unsureText(answer);
    container.append(note);
  }
  for (const item of answer.top_k.slice(0, topK)) {
    const row = document.createElement("div");
    row.className = "bar-row";
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = item.label;
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${(item.probability * 100).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = percent(item.probability);
    row.append(name, track, value);
    container.append(row);
  }
}

/** The one element automated checks read: the current answer in data attributes. */
export function publishAnswer(element, answer, source) {
  element.dataset.label = answer.label;
  element.dataset.probability = String(answer.probability);
  element.dataset.unknown = String(Boolean(answer.unknown));
  if (answer.novelty !== null && answer.novelty !== undefined) element.dataset.novelty = String(answer.novelty);
  element.dataset.source = source;
  element.dataset.count = String(Number(element.dataset.count || 0) + 1);
  element.dataset.unsure = String(Boolean(answer.unsure));
  element.textContent = answer.unknown ? `${NONE_OF_THESE} (closest: ${answer.label})`
    : answer.unsure ? unsureText(answer) : `${answer.label} ${percent(answer.probability)}`;
}

/** A close call, as the studio's pages say it. */
export function unsureText(answer) {
  return `not sure: ${answer.unsure[0]} or ${answer.unsure[1]}`;
}

export function percent(value) {
  return `${(value * 100).toFixed(1)}%`;
}

/** Why the camera cannot be used, as a sentence that says what to do. */
export function cameraProblem(error) {
  const name = error && error.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return "The browser did not allow the camera: allow it for this page (the camera icon in the address bar), then press Start camera again.";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return "No camera was found: plug one in (or choose another), then press Start camera again.";
  }
  if (name === "NotReadableError") return "The camera is busy in another program: close it there, then press Start camera again.";
  if (!navigator.mediaDevices) return "This page cannot use a camera: open it over https or on localhost.";
  return `The camera could not be started (${error && error.message ? error.message : error}); try another camera.`;
}

/**
 * A camera whose frames are classified continuously, one after another (never more than one
 * in flight), with pause, resume, choice of camera and mirroring. ``onAnswer(answer, rate)``
 * gets each answer and the pictures classified per second over the last two seconds.
 */
export class LiveCamera {
  constructor(video, classifier, onAnswer) {
    this.video = video;
    this.classifier = classifier;
    this.onAnswer = onAnswer;
    this.stream = null;
    this.paused = false;
    this.times = [];
    this.running = false;
    this.lastPicture = null;
  }

  static async cameras() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return [];
    const devices = await navigator.mediaDevices.enumerateDevices();
    return devices.filter((device) => device.kind === "videoinput");
  }

  async start(deviceId) {
    this.stop();
    const video = { width: { ideal: 640 }, height: { ideal: 480 } };
    if (deviceId) video.deviceId = { exact: deviceId };
    this.stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
    this.video.srcObject = this.stream;
    this.video.muted = true;
    this.video.playsInline = true;
    await this.video.play();
    this.paused = false;
    this.loop();
  }

  stop() {
    this.running = false;
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    this.stream = null;
  }

  setPaused(paused) {
    this.paused = paused;
    if (paused) this.video.pause(); else { this.video.play(); this.loop(); }
  }

  setMirrored(mirrored) {
    // Only the view is mirrored, as in a mirror; the model sees the frames as the camera gives them.
    this.video.style.transform = mirrored ? "scaleX(-1)" : "";
  }

  /** The frame the last answer was computed on, as a PNG Blob (for "Explain this frame"). */
  async frameBlob() {
    const picture = this.lastPicture;
    if (!picture) return null;
    const canvas = new OffscreenCanvas(picture.width, picture.height);
    const rgba = new ImageData(picture.width, picture.height);
    for (let i = 0, j = 0; j < picture.data.length; i += 4, j += 3) {
      rgba.data[i] = picture.data[j]; rgba.data[i + 1] = picture.data[j + 1]; rgba.data[i + 2] = picture.data[j + 2];
      rgba.data[i + 3] = 255;
    }
    canvas.getContext("2d").putImageData(rgba, 0, 0);
    return canvas.convertToBlob({ type: "image/png" });
  }

  async loop() {
    if (this.running) return;
    this.running = true;
    while (this.running && !this.paused && this.stream) {
      const width = this.video.videoWidth, height = this.video.videoHeight;
      if (!width || !height) { await sleep(50); continue; }
      const picture = pictureFromSource(this.video, width, height);
      const answer = await this.classifier.classify(picture);
      if (!this.running || this.paused) break;
      this.lastPicture = picture;
      const now = performance.now();
      this.times.push(now);
      this.times = this.times.filter((t) => now - t <= 2000);
      const rate = this.times.length > 1 ? (this.times.length - 1) / ((now - this.times[0]) / 1000) : 0;
      this.onAnswer(answer, rate);
      await sleep(0);  // let the page paint and take clicks between frames
    }
    this.running = false;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
