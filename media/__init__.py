"""WebRTC audio for callmesh: legs, forwarding, conferences, recording (docs/ARCHITECTURE.md,
Media).

- `media.peer`: the one module importing aiortc, aioice, pylibsrtp and av: `PeerLeg` (a WebRTC
  leg with the lean RTP path), `OpusCodec`, `G711Codec`, `StockBridge`, `ToneClient`.
- `media.forward`: `Port` (a leg's forwarding state) and `Bridge` (two legs).
- `media.conference`: `Conference` (three or more legs, mixed).
- `media.relay`: `RelayLeg` (the node-to-node leg).
- `media.recorder`: `Recorder` (both sides into one WAV file).
- `media.offer` (pure): `check_offer`, what a WebRTC offer from outside must hold (`BadSdp`).
- `media.rtp` and `media.tone` (pure): RTP headers and statistics; tones and their detection.
"""
