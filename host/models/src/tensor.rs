//! Tensors as the host passes them around (element type, shape, raw
//! little-endian bytes), and their conversion to and from tract's.

use std::fmt;
use tract_onnx::prelude::{DatumType, Tensor};

// The raw bytes are little-endian on the wire (wasi:nn) and in memory here.
#[cfg(target_endian = "big")]
compile_error!("mantle passes tensor bytes through unchanged and needs a little-endian host");

/// The element types a tensor can hold on its way through the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    F16,
    F32,
    F64,
    U8,
    I32,
    I64,
}

impl ElementType {
    pub fn size(self) -> usize {
        match self {
            ElementType::U8 => 1,
            ElementType::F16 => 2,
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F64 | ElementType::I64 => 8,
        }
    }

    fn datum_type(self) -> DatumType {
        match self {
            ElementType::F16 => DatumType::F16,
            ElementType::F32 => DatumType::F32,
            ElementType::F64 => DatumType::F64,
            ElementType::U8 => DatumType::U8,
            ElementType::I32 => DatumType::I32,
            ElementType::I64 => DatumType::I64,
        }
    }

    pub(crate) fn from_datum_type(datum_type: DatumType) -> Option<Self> {
        Some(match datum_type {
            DatumType::F16 => ElementType::F16,
            DatumType::F32 => ElementType::F32,
            DatumType::F64 => ElementType::F64,
            DatumType::U8 | DatumType::Bool => ElementType::U8,
            DatumType::I32 => ElementType::I32,
            DatumType::I64 => ElementType::I64,
            _ => return None,
        })
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ElementType::F16 => "FP16",
            ElementType::F32 => "FP32",
            ElementType::F64 => "FP64",
            ElementType::U8 => "U8",
            ElementType::I32 => "I32",
            ElementType::I64 => "I64",
        };
        f.write_str(name)
    }
}

/// A dense row-major tensor of little-endian elements.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub element_type: ElementType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl HostTensor {
    /// The byte length the shape calls for, or a message if it overflows.
    /// A zero dimension does not excuse the others: tract computes strides
    /// (as `isize`) from every dimension, so their product must fit even
    /// when the tensor is empty.
    pub fn expected_len(element_type: ElementType, shape: &[usize]) -> Result<usize, String> {
        let bound = shape.iter().try_fold(element_type.size(), |acc, &d| acc.checked_mul(d.max(1)));
        if bound.is_none_or(|bytes| isize::try_from(bytes).is_err()) {
            return Err(format!("shape {shape:?} of {element_type} is too large"));
        }
        Ok(shape.iter().product::<usize>() * element_type.size())
    }

    /// Checks that the data holds exactly the elements the shape calls for.
    pub fn check_data_len(&self) -> Result<(), String> {
        let expected = Self::expected_len(self.element_type, &self.shape)?;
        if expected != self.data.len() {
            return Err(format!(
                "shape {:?} of {} needs {expected} bytes of data, but {} were given",
                self.shape,
                self.element_type,
                self.data.len()
            ));
        }
        Ok(())
    }

    pub fn into_tract(self) -> Result<Tensor, String> {
        self.check_data_len()?;
        // SAFETY: every element type here is plain numeric data for which
        // any bit pattern is a valid value, and tract checks the length
        // against the shape before copying.
        unsafe { Tensor::from_raw_dt(self.element_type.datum_type(), &self.shape, &self.data) }
            .map_err(|e| format!("{e:#}"))
    }

    pub fn from_tract(tensor: &Tensor) -> Result<HostTensor, String> {
        let element_type = ElementType::from_datum_type(tensor.datum_type())
            .ok_or_else(|| format!("element type {:?} cannot be returned through wasi:nn", tensor.datum_type()))?;
        Ok(HostTensor { element_type, shape: tensor.shape().to_vec(), data: tensor.as_bytes().to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_length_is_checked_without_overflow() {
        assert_eq!(HostTensor::expected_len(ElementType::F32, &[1, 3, 224, 224]), Ok(602_112));
        assert_eq!(HostTensor::expected_len(ElementType::U8, &[]), Ok(1));
        assert!(HostTensor::expected_len(ElementType::I64, &[usize::MAX, 2]).is_err());
        // Found by the host_tensor fuzz target: an empty tensor whose other
        // dimensions overflow together made tract's stride arithmetic panic.
        let huge = usize::MAX >> 15;
        assert!(HostTensor::expected_len(ElementType::U8, &[huge, 165, 0, huge, huge, 44]).is_err());
        let empty =
            HostTensor { element_type: ElementType::U8, shape: vec![huge, 165, 0, huge, huge, 44], data: vec![] };
        assert!(empty.into_tract().is_err_and(|m| m.contains("too large")));
        let past_isize =
            HostTensor { element_type: ElementType::U8, shape: vec![0, 0, 0, 3, usize::MAX >> 3, 2], data: vec![] };
        assert!(past_isize.into_tract().is_err_and(|m| m.contains("too large")));
        assert_eq!(HostTensor::expected_len(ElementType::F32, &[0, 3, 224, 224]), Ok(0));
        let short = HostTensor { element_type: ElementType::F16, shape: vec![2, 2], data: vec![0; 6] };
        assert!(short.check_data_len().is_err_and(|m| m.contains("needs 8 bytes")));
    }

    #[test]
    fn tensors_survive_the_trip_through_tract() {
        for (element_type, size) in [
            (ElementType::F16, 2),
            (ElementType::F32, 4),
            (ElementType::F64, 8),
            (ElementType::U8, 1),
            (ElementType::I32, 4),
            (ElementType::I64, 8),
        ] {
            let data: Vec<u8> = (0..6 * size).map(|i| (i * 7 % 251) as u8).collect();
            let tensor = HostTensor { element_type, shape: vec![2, 3], data };
            let back = HostTensor::from_tract(&tensor.clone().into_tract().expect("converts")).expect("converts back");
            assert_eq!(back, tensor, "{element_type}");
        }
    }

    fn element_types() -> impl proptest::strategy::Strategy<Value = ElementType> {
        use ElementType::*;
        proptest::sample::select(vec![F16, F32, F64, U8, I32, I64])
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_of_the_right_length_survive_the_trip_through_tract(
            element_type in element_types(),
            shape in proptest::collection::vec(0..5usize, 0..=4),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let len = HostTensor::expected_len(element_type, &shape).expect("a small shape");
            let data: Vec<u8> = (0..len as u64).map(|i| (i.wrapping_mul(seed | 1) >> 3) as u8).collect();
            let tensor = HostTensor { element_type, shape, data };
            let back = HostTensor::from_tract(&tensor.clone().into_tract().expect("converts")).expect("converts back");
            proptest::prop_assert_eq!(back, tensor);
        }

        #[test]
        fn a_wrong_data_length_is_refused_not_read(
            element_type in element_types(),
            shape in proptest::collection::vec(0..5usize, 0..=4),
            len in 0..700usize,
        ) {
            let expected = HostTensor::expected_len(element_type, &shape).expect("a small shape");
            let tensor = HostTensor { element_type, shape, data: vec![7; len] };
            proptest::prop_assert_eq!(tensor.check_data_len().is_ok(), len == expected);
            proptest::prop_assert_eq!(tensor.into_tract().is_ok(), len == expected);
        }
    }
}
