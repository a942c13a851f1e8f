//! The speech-detect example on real speech with silence around it.

use mantle_tests::{node, post, sample};
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
    assert_eq!(error.status(), 415, "{error}");
    assert!(error.to_string().contains("WAV"), "{error}");
}
