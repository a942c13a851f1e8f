//! PP-OCR's recognizer in tract: a Paddle export whose height dimension has
//! no name and whose shape arithmetic types only once the sizes are known.

use mantle::models::{ElementType, HostTensor, LoadOptions, Model};
use mantle_tests::repo_root;

/// Reads one 320×48 line of text with the recognizer: normalise to
/// `(x/255 - 0.5) / 0.5`, NCHW, run, then greedy CTC decoding.
#[test]
fn the_recognizer_reads_a_rendered_line_of_text() {
    let models = repo_root().join("models");
    let pins = [("p2o.DynamicDimension.0", 1), ("x_2", 48), ("p2o.DynamicDimension.1", 320)];
    let options =
        LoadOptions { pinned_dims: pins.iter().map(|&(name, size)| (name.to_owned(), size)).collect(), batching: None };
    let model = Model::load("ppocr-rec", &models.join("ppocr-rec/model.onnx"), &options).expect("the recognizer loads");

    let line = image::open(models.join("samples/text_line.png")).expect("the sample decodes").to_rgb8();
    let (width, height) = (line.width() as usize, line.height() as usize);
    assert_eq!((width, height), (320, 48));
    let mut input = vec![0f32; 3 * height * width];
    for (x, y, pixel) in line.enumerate_pixels() {
        for channel in 0..3 {
            input[(channel * height + y as usize) * width + x as usize] = f32::from(pixel[channel]) / 127.5 - 1.0;
        }
    }
    let data = input.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensor = HostTensor { element_type: ElementType::F32, shape: vec![1, 3, height, width], data };
    let outputs = model.run(vec![("x".to_owned(), tensor)]).expect("the recognizer runs");

    let (_, probabilities) = &outputs[0];
    let [1, columns, classes] = probabilities.shape[..] else {
        panic!("unexpected output shape {:?}", probabilities.shape);
    };
    let values: Vec<f32> =
        probabilities.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let characters = std::fs::read_to_string(models.join("ppocr-rec/characters.txt")).expect("the character list");
    let characters: Vec<&str> = characters.lines().chain([" "]).collect();
    assert_eq!(characters.len() + 1, classes, "blank + characters + space");

    let mut text = String::new();
    let mut previous = 0;
    for column in values.chunks_exact(classes).take(columns) {
        let best = column.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
        if best != previous && best != 0 {
            text.push_str(characters[best - 1]);
        }
        previous = best;
    }
    assert_eq!(text.trim(), "Hello tract 2024");
}
