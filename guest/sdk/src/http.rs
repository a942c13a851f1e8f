//! Helpers on the request, response and error records of the world.

use crate::{Error, Request, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Display;

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_slice())
    }

    /// The first value of header `name`, if it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The body as UTF-8 text, or an `invalid-input` error.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body).map_err(|e| Error::invalid_input(format!("the body is not valid UTF-8: {e}")))
    }

    /// The body parsed as JSON, or an `invalid-input` error.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::invalid_input(format!("the body is not the expected JSON: {e}")))
    }
}

impl Response {
    /// A response with `status` and `body` and no headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response { status, headers: Vec::new(), body: body.into() }
    }

    /// `200 OK` with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::new(200, body)
    }

    /// `200 OK` with `value` as a JSON body.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::internal(format!("cannot encode the response as JSON: {e}")))?;
        Ok(Self::ok(body).with_header("content-type", "application/json"))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }
}

impl Error {
    /// The request cannot be handled as sent (the host answers 400).
    pub fn invalid_input(message: impl Display) -> Self {
        Error::InvalidInput(message.to_string())
    }

    /// The body is of a kind this handler does not accept (415).
    pub fn unsupported_media_type(message: impl Display) -> Self {
        Error::UnsupportedMediaType(message.to_string())
    }

    /// The handler failed for a reason that is not the caller's (500).
    pub fn internal(message: impl Display) -> Self {
        Error::Internal(message.to_string())
    }

    /// The caller may not have what it asked for (403).
    pub fn forbidden(message: impl Display) -> Self {
        Error::Forbidden(message.to_string())
    }
}
