//! Classifies a photo: decode PNG or JPEG, resize the shorter side to 256,
//! centre-crop 224×224, normalise, run `efficientnet-lite0`, and answer the
//! five most likely ImageNet classes.

use image::imageops::{self, FilterType};
use image::{ImageFormat, RgbImage};
use mantle_guest::{Error, Model, Request, Response, Tensor};
use serde::Serialize;

const MODEL: &str = "efficientnet-lite0";
const RESIZE_TO: u32 = 256;
const CROP: u32 = 224;
const TOP_K: usize = 5;
include!(concat!(env!("OUT_DIR"), "/labels.rs"));

#[derive(Serialize)]
struct Class {
    index: usize,
    label: &'static str,
    score: f32,
}

#[derive(Serialize)]
struct Answer {
    top: Vec<Class>,
}

pub fn handle(request: Request) -> Result<Response, Error> {
    let image = decode(&request.body)?;
    let input = to_input(&center_crop(&image));
    let outputs = Model::load(MODEL)?.run([("input", Tensor::from_slice(&[1, 3, CROP, CROP], &input))])?;
    let probabilities = softmax(&outputs.get("logits")?.to_vec::<f32>()?);
    let mut ranked: Vec<(usize, f32)> = probabilities.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top = ranked
        .into_iter()
        .take(TOP_K)
        .map(|(index, score)| Class { index, label: LABELS.get(index).copied().unwrap_or(""), score })
        .collect();
    Response::json(&Answer { top })
}

fn decode(body: &[u8]) -> Result<RgbImage, Error> {
    if body.is_empty() {
        return Err(Error::invalid_input("the body is empty: send PNG or JPEG bytes"));
    }
    let format = image::guess_format(body)
        .map_err(|_| Error::unsupported_media_type("the body is neither a PNG nor a JPEG image"))?;
    match format {
        ImageFormat::Png => {}
        // A JPEG cut short still decodes into a partly grey picture; refuse it
        // instead of classifying a picture the client never sent.
        ImageFormat::Jpeg if !body.ends_with(&[0xFF, 0xD9]) => {
            return Err(Error::invalid_input("the JPEG image is truncated: it has no end-of-image marker"));
        }
        ImageFormat::Jpeg => {}
        other => {
            return Err(Error::unsupported_media_type(format!("{other:?} images are not accepted: send PNG or JPEG")));
        }
    }
    let image = image::load_from_memory_with_format(body, format)
        .map_err(|e| Error::invalid_input(format!("cannot decode the {format:?} image: {e}")))?;
    Ok(image.to_rgb8())
}

/// Resizes the shorter side to 256 (bilinear) and cuts the central 224×224.
fn center_crop(image: &RgbImage) -> RgbImage {
    let (width, height) = image.dimensions();
    let scale = RESIZE_TO as f32 / width.min(height) as f32;
    let new_width = ((width as f32 * scale).round() as u32).max(RESIZE_TO);
    let new_height = ((height as f32 * scale).round() as u32).max(RESIZE_TO);
    let resized = imageops::resize(image, new_width, new_height, FilterType::Triangle);
    let left = (new_width - CROP) / 2;
    let top = (new_height - CROP) / 2;
    imageops::crop_imm(&resized, left, top, CROP, CROP).to_image()
}

/// RGB bytes to NCHW floats, `(x - 127) / 128` as the model was trained.
fn to_input(image: &RgbImage) -> Vec<f32> {
    let plane = (CROP * CROP) as usize;
    let mut input = vec![0.0f32; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for channel in 0..3 {
            input[channel * plane + i] = (f32::from(pixel[channel]) - 127.0) / 128.0;
        }
    }
    input
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

mantle_guest::handler!(handle);
