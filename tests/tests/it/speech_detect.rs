//! The speech-detect example on real speech with silence around it.

use mantle_tests::{http_status, node, post, sample};
use std::io::Cursor;

/// `speech.wav` with one second of silence before and after, and where the
/// speech lies in the result, in milliseconds.
fn padded_speech() -> (Vec<u8>, u64, u64) {
    let mut reader = hound::WavReader::new(Cursor::new(sample("speech.wav"))).expect("a WAV sample");
    let spec = reader.spec();
    let speech: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>().expect("16-bit samples");
    let rate = spec.sample_rate as usize;
    let silence = vec![0i16; rate];
    let mut out = Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut out, spec).expect("a WAV writer");
    for &s in silence.iter().chain(&speech).chain(&silence) {
        writer.write_sample(s).expect("write");
    }
    writer.finalize().expect("finalize");
    let speech_ms = (speech.len() * 1000 / rate) as u64;
    (out.into_inner(), 1000, 1000 + speech_ms)
}

#[tokio::test]
async fn speech_is_found_between_the_silences() {
    let node = node();
    let (wav, speech_start, speech_end) = padded_speech();
    let total_ms = speech_end + 1000;
    let answer = node.call_json(node.example("speech-detect"), post(wav)).await;
    let segments = answer["segments"].as_array().expect("segments");
    assert!(!segments.is_empty(), "speech was found: {answer}");
    for segment in segments {
        let start = segment["start_ms"].as_u64().expect("start_ms");
        let end = segment["end_ms"].as_u64().expect("end_ms");
        assert!(start < end, "{segment}");
        assert!(
            start + 200 >= speech_start && end <= speech_end + 200,
            "{segment} lies within the speech ({speech_start}..{speech_end} ms) ± 200 ms"
        );
        let inside_padding = end <= speech_start || start >= speech_end;
        assert!(!inside_padding && end <= total_ms, "{segment} is not in the silent padding");
    }
}

#[tokio::test]
async fn a_body_that_is_not_wav_is_refused() {
    let node = node();
    let error = node
        .call(node.example("speech-detect"), post(b"RIFF\x04\x00\x00\x00junk".to_vec()))
        .await
        .expect_err("refused");
    assert_eq!(http_status(&error), 415, "{error}");
    assert!(error.to_string().contains("WAV"), "{error}");
}

/// `speech.wav` written again with `bits`-bit samples of `format`, the
/// values unchanged.
fn rewritten(format: hound::SampleFormat, bits: u16) -> Vec<u8> {
    let mut reader = hound::WavReader::new(Cursor::new(sample("speech.wav"))).expect("a WAV sample");
    let spec = hound::WavSpec { sample_format: format, bits_per_sample: bits, ..reader.spec() };
    let samples: Vec<i16> = reader.samples::<i16>().collect::<Result<_, _>>().expect("16-bit samples");
    let mut out = Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut out, spec).expect("a WAV writer");
    for s in samples {
        match format {
            hound::SampleFormat::Float => writer.write_sample(f32::from(s) / 32_768.0),
            hound::SampleFormat::Int => writer.write_sample(i32::from(s) << (bits - 16)),
        }
        .expect("write");
    }
    writer.finalize().expect("finalize");
    out.into_inner()
}

#[tokio::test]
async fn every_sample_format_gives_the_same_segments() {
    // 16-bit and float samples are read straight from the data chunk,
    // 24- and 32-bit integers through hound: all hold the same audio.
    let node = node();
    let reference = node.call_json(node.example("speech-detect"), post(sample("speech.wav"))).await;
    assert!(!reference["segments"].as_array().expect("segments").is_empty(), "{reference}");
    for (format, bits) in
        [(hound::SampleFormat::Float, 32), (hound::SampleFormat::Int, 24), (hound::SampleFormat::Int, 32)]
    {
        let answer = node.call_json(node.example("speech-detect"), post(rewritten(format, bits))).await;
        assert_eq!(answer, reference, "{bits}-bit {format:?}");
    }
}

#[tokio::test]
async fn a_wav_cut_short_is_refused() {
    let node = node();
    let mut wav = sample("speech.wav");
    wav.truncate(wav.len() / 2);
    let error = node.call(node.example("speech-detect"), post(wav)).await.expect_err("refused");
    assert_eq!(http_status(&error), 400, "{error}");
    assert!(error.to_string().contains("damaged"), "{error}");
}
