// The browser's side of a WebRTC audio leg to the node: the microphone through a small WebAudio
// graph (mute is a gain of 0 in the sent audio, a level meter reads it), one RTCPeerConnection
// negotiated with one offer and one answer over the HTTP API, and the node's audio played in an
// <audio> element.

// DTMF: the row and column frequencies of each key (ITU-T Q.23).
export const DTMF = {
  1: [697, 1209], 2: [697, 1336], 3: [697, 1477], A: [697, 1633],
  4: [770, 1209], 5: [770, 1336], 6: [770, 1477], B: [770, 1633],
  7: [852, 1209], 8: [852, 1336], 9: [852, 1477], C: [852, 1633],
  "*": [941, 1209], 0: [941, 1336], "#": [941, 1477], D: [941, 1633],
};

const TONE_MS = 120;
const GATHER_TIMEOUT_MS = 3000;

export class Phone {
  // audio: the <audio> element that plays the node's side; onStatus(state, detail) hears
  // "microphone", "connecting", "connected", "disconnected", "failed", "closed", "no-media".
  constructor(audio, { onStatus = () => {} } = {}) {
    this.audio = audio;
    this.onStatus = onStatus;
    this.pc = null;
    this.ctx = null;
    this.mic = null;
    this.muted = false;
  }

  // Open the microphone (asks the person once) and build the graph that feeds the connection.
  async open() {
    if (this.ctx) return;
    this.mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false },
      video: false,
    });
    this.ctx = new AudioContext();
    await this.ctx.resume();
    this.source = this.ctx.createMediaStreamSource(this.mic);
    this.gain = this.ctx.createGain();
    this.out = this.ctx.createMediaStreamDestination();
    this.micMeter = this.ctx.createAnalyser();
    this.micMeter.fftSize = 512;
    this.source.connect(this.gain).connect(this.out);
    this.source.connect(this.micMeter);
    this.onStatus("microphone");
  }

  // One offer, one answer: negotiate(offerSdp) posts the offer and resolves to the node's answer
  // SDP (or null when the node runs signalling-only). A new connect replaces the old connection.
  async connect(negotiate) {
    await this.open();
    this.hangup();
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    pc.addTrack(this.out.stream.getAudioTracks()[0], this.out.stream);
    pc.addEventListener("track", (event) => {
      const [stream] = event.streams.length ? event.streams : [new MediaStream([event.track])];
      this.audio.srcObject = stream;
      this.audio.play().catch(() => {});
    });
    pc.addEventListener("connectionstatechange", () => {
      if (this.pc === pc) this.onStatus(pc.connectionState);
    });
    this.onStatus("connecting");
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    let answer;
    try {
      answer = await negotiate(pc.localDescription.sdp);
    } catch (error) {
      this.hangup();
      throw error;
    }
    if (!answer) {
      this.hangup();
      this.onStatus("no-media");
      return false;
    }
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    return true;
  }

  get connected() {
    return Boolean(this.pc && this.pc.connectionState === "connected");
  }

  setMuted(muted) {
    this.muted = muted;
    if (this.gain) this.gain.gain.value = muted ? 0 : 1;
  }

  // The microphone's level, 0..1, for a meter.
  level() {
    if (!this.micMeter) return 0;
    const samples = new Float32Array(this.micMeter.fftSize);
    this.micMeter.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const x of samples) sum += x * x;
    return Math.min(1, Math.sqrt(sum / samples.length) * 4);
  }

  // Close the peer connection; the microphone stays open for the next one.
  hangup() {
    if (this.pc) {
      const pc = this.pc;
      this.pc = null;
      pc.close();
      this.audio.srcObject = null;
      this.onStatus("closed");
    }
  }

  close() {
    this.hangup();
    if (this.mic) this.mic.getTracks().forEach((track) => track.stop());
    if (this.ctx) this.ctx.close();
    this.mic = null;
    this.ctx = null;
  }
}

// Every host candidate in the offer: the node's API takes one offer, no trickle.
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") finish();
    };
    const timer = setTimeout(finish, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// A key's DTMF tone, quietly, as feedback for the person pressing it (the keypads send digits
// through the API, not in the audio).
export function beep(key) {
  const pair = DTMF[key];
  if (!pair) return;
  const ctx = new AudioContext();
  const gain = ctx.createGain();
  gain.gain.value = 0.08;
  gain.connect(ctx.destination);
  for (const frequency of pair) {
    const osc = ctx.createOscillator();
    osc.frequency.value = frequency;
    osc.connect(gain);
    osc.start();
    osc.stop(ctx.currentTime + TONE_MS / 1000);
  }
  setTimeout(() => ctx.close(), TONE_MS + 200);
}
