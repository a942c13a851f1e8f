//! Classifies a photo: decode PNG or JPEG, resize the shorter side to 256,
//! centre-crop 224×224, normalise, run `efficientnet-lite0`, and answer the
//! five most likely ImageNet classes.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
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
    let input = to_input(&center_crop(&image)?);
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

/// Resizes the shorter side to 256 (bilinear) and cuts the central
/// 224×224, as RGB bytes. Only the part of the picture the crop keeps is
/// resampled, in one pass: the crop's box, in the picture's own
/// coordinates, resized to 224×224.
fn center_crop(image: &RgbImage) -> Result<Vec<u8>, Error> {
    let (width, height) = image.dimensions();
    let scale = RESIZE_TO as f32 / width.min(height) as f32;
    let new_width = ((width as f32 * scale).round() as u32).max(RESIZE_TO);
    let new_height = ((height as f32 * scale).round() as u32).max(RESIZE_TO);
    let (x_scale, y_scale) = (f64::from(new_width) / f64::from(width), f64::from(new_height) / f64::from(height));
    let left = f64::from((new_width - CROP) / 2) / x_scale;
    let top = f64::from((new_height - CROP) / 2) / y_scale;
    let source = ImageRef::new(width, height, image.as_raw(), PixelType::U8x3)
        .map_err(|e| Error::internal(format!("decoded picture: {e}")))?;
    let mut cropped = Image::new(CROP, CROP, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).crop(
        left,
        top,
        f64::from(CROP) / x_scale,
        f64::from(CROP) / y_scale,
    );
    Resizer::new().resize(&source, &mut cropped, &options).map_err(|e| Error::internal(format!("resizing: {e}")))?;
    Ok(cropped.into_vec())
}

/// RGB bytes to NCHW floats, `(x - 127) / 128` as the model was trained.
fn to_input(rgb: &[u8]) -> Vec<f32> {
    let plane = (CROP * CROP) as usize;
    let mut input = vec![0.0f32; 3 * plane];
    for (i, pixel) in rgb.chunks_exact(3).enumerate() {
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
