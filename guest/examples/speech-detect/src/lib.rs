//! Finds speech in a WAV recording: decode, mix down to mono, resample to
//! 16 kHz, run `silero-vad` over 32 ms frames while carrying its recurrent
//! state, and turn the per-frame speech probabilities into segments.

pub mod resample;

use mantle_guest::{Error, Model, Request, Response, Tensor, host};
use resample::Resampler;
use serde::Serialize;
use std::io::Cursor;

const MODEL: &str = "silero-vad";
const SAMPLE_RATE: usize = 16_000;
/// New samples per model call (32 ms).
const FRAME: usize = 512;
/// Samples of the previous frame the model sees before the new ones.
const CONTEXT: usize = 64;
const STATE_SHAPE: [u32; 3] = [2, 1, 128];

/// Segmentation settings, in the spirit of Silero's `get_speech_timestamps`.
/// `threshold` can be overridden by the module's config value `threshold`.
struct Settings {
    threshold: f32,
    min_speech_ms: usize,
    min_silence_ms: usize,
    pad_ms: usize,
}

#[derive(Serialize, Debug, Clone, Copy)]
struct Segment {
    start_ms: u64,
    end_ms: u64,
}

#[derive(Serialize)]
struct Answer {
    segments: Vec<Segment>,
}

pub fn handle(request: Request) -> Result<Response, Error> {
    let settings = settings()?;
    let samples = decode(&request.body)?;
    let probabilities = speech_probabilities(&samples)?;
    let segments = segments(&probabilities, samples.len(), &settings);
    Response::json(&Answer { segments })
}

fn settings() -> Result<Settings, Error> {
    let threshold = match host::config("threshold") {
        None => 0.5,
        Some(value) => value
            .parse::<f32>()
            .ok()
            .filter(|t| (0.0..1.0).contains(t))
            .ok_or_else(|| Error::internal(format!("config `threshold` is not in [0, 1): {value}")))?,
    };
    Ok(Settings { threshold, min_speech_ms: 250, min_silence_ms: 100, pad_ms: 30 })
}

/// WAV bytes to mono 16 kHz samples in [-1, 1].
fn decode(body: &[u8]) -> Result<Vec<f32>, Error> {
    let unreadable =
        |e: hound::Error| Error::unsupported_media_type(format!("the body is not a readable WAV file: {e}"));
    let mut cursor = Cursor::new(body);
    let (spec, samples) = {
        let reader = hound::WavReader::new(&mut cursor).map_err(unreadable)?;
        (reader.spec(), reader.len() as usize)
    };
    // hound leaves the cursor at the first byte of the data chunk.
    let data_start = cursor.position() as usize;
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) if let Some(data) = packed_data::<2>(body, data_start, samples) => {
            data.iter().map(|&bytes| f32::from(i16::from_le_bytes(bytes)) * (1.0 / 32_768.0)).collect()
        }
        (hound::SampleFormat::Float, 32) if let Some(data) = packed_data::<4>(body, data_start, samples) => {
            data.iter().map(|&bytes| f32::from_le_bytes(bytes)).collect()
        }
        _ => samples_through_hound(hound::WavReader::new(Cursor::new(body)).map_err(unreadable)?)?,
    };

    let channels = usize::from(spec.channels.max(1));
    let mono: Vec<f32> = if channels == 1 {
        interleaved
    } else {
        interleaved.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() / channels as f32).collect()
    };
    if mono.is_empty() {
        return Err(Error::invalid_input("the WAV file holds no samples"));
    }
    to_model_rate(mono, spec.sample_rate as usize)
}

/// The data chunk as `samples` little-endian values of `N` bytes each, if it
/// is laid out exactly so and lies whole in `body`. Converting these in one
/// loop is several times faster than hound's sample iterator, which reads
/// each sample through `io::Read`; other layouts go through hound.
fn packed_data<const N: usize>(body: &[u8], data_start: usize, samples: usize) -> Option<&[[u8; N]]> {
    // The chunk's header, just before its data: the id and the byte length.
    let header = body.get(data_start.checked_sub(8)?..data_start)?;
    let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if &header[..4] != b"data" || Some(length) != samples.checked_mul(N) {
        return None;
    }
    let (values, rest) = body.get(data_start..data_start.checked_add(length)?)?.as_chunks::<N>();
    rest.is_empty().then_some(values)
}

/// Every other sample format hound reads, scaled to [-1, 1].
fn samples_through_hound(reader: hound::WavReader<Cursor<&[u8]>>) -> Result<Vec<f32>, Error> {
    let spec = reader.spec();
    match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader.into_samples::<f32>().collect::<Result<_, _>>(),
        (hound::SampleFormat::Int, bits @ 8..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader.into_samples::<i32>().map(|s| s.map(|s| s as f32 * scale)).collect::<Result<_, _>>()
        }
        (format, bits) => {
            return Err(Error::unsupported_media_type(format!("{bits}-bit {format:?} WAV samples are not supported")));
        }
    }
    .map_err(|e| Error::invalid_input(format!("the WAV data is damaged: {e}")))
}

fn to_model_rate(samples: Vec<f32>, rate: usize) -> Result<Vec<f32>, Error> {
    if rate == SAMPLE_RATE {
        return Ok(samples);
    }
    if !(4_000..=384_000).contains(&rate) {
        return Err(Error::unsupported_media_type(format!("a sample rate of {rate} Hz is not supported")));
    }
    Ok(Resampler::new(rate, SAMPLE_RATE).apply(&samples))
}

/// One speech probability per 512-sample frame.
fn speech_probabilities(samples: &[f32]) -> Result<Vec<f32>, Error> {
    let session = Model::load(MODEL)?.session()?;
    let mut state = Tensor::from_slice(&STATE_SHAPE, &[0.0f32; 256]);
    let mut window = vec![0.0f32; CONTEXT + FRAME];
    let mut probabilities = Vec::with_capacity(samples.len() / FRAME + 1);
    for frame in samples.chunks(FRAME) {
        // The last frame may be short: the rest of the window stays silent.
        window.copy_within(FRAME.., 0);
        window[CONTEXT..].fill(0.0);
        window[CONTEXT..CONTEXT + frame.len()].copy_from_slice(frame);
        let input = Tensor::from_slice(&[1, (CONTEXT + FRAME) as u32], &window);
        let mut outputs = session.run([("input", input), ("state", state)])?;
        probabilities.push(outputs.get("output")?.to_vec::<f32>()?.first().copied().unwrap_or(0.0));
        // The new state goes straight back to the host: no copy through the guest.
        state = outputs.take("stateN")?;
    }
    Ok(probabilities)
}

/// Hysteresis over the frame probabilities: speech starts above `threshold`
/// and ends after `min_silence_ms` below `threshold - 0.15`.
fn segments(probabilities: &[f32], total: usize, settings: &Settings) -> Vec<Segment> {
    let samples_per_ms = SAMPLE_RATE / 1000;
    let min_speech = settings.min_speech_ms * samples_per_ms;
    let min_silence = settings.min_silence_ms * samples_per_ms;
    let pad = settings.pad_ms * samples_per_ms;
    let low = settings.threshold - 0.15;

    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut start: Option<usize> = None;
    let mut silence_since: Option<usize> = None;
    for (i, &p) in probabilities.iter().enumerate() {
        let at = i * FRAME;
        if p >= settings.threshold {
            silence_since = None;
            start.get_or_insert(at);
        } else if let Some(s) = start.filter(|_| p < low) {
            let quiet_from = *silence_since.get_or_insert(at);
            if at - quiet_from >= min_silence {
                if quiet_from - s >= min_speech {
                    spans.push((s, quiet_from));
                }
                start = None;
                silence_since = None;
            }
        }
    }
    if let Some(s) = start {
        let end = silence_since.unwrap_or(total).min(total);
        if end.saturating_sub(s) >= min_speech {
            spans.push((s, end));
        }
    }

    spans
        .into_iter()
        .map(|(s, e)| Segment {
            start_ms: (s.saturating_sub(pad) / samples_per_ms) as u64,
            end_ms: ((e + pad).min(total) / samples_per_ms) as u64,
        })
        .collect()
}

mantle_guest::handler!(handle);
