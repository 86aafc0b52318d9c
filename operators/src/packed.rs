//! [`Packed`]: an `Option` that takes no more room than its value, for state kept per device
//! and vehicle. An `Option<i64>` or `Option<(i64, f32)>` takes 8 bytes more than its value,
//! and a few of them decide which allocator size class a device's state falls in (and how
//! large every vehicle's slot is). A `Packed` value reserves one value of its type as none
//! instead: `i64::MIN` for times (no reading has that time), NaN for measurements (where these
//! are read, a NaN compares false with everything, as none does, so a NaN stored as none
//! changes no decision).
//!
//! It is written and read as the `Option` it stands for, so the snapshot format does not see it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A type with a value that stands for none.
pub trait Niche: Copy {
    /// The value that means none.
    const NONE: Self;
    /// Whether `self` is [`Niche::NONE`].
    fn is_none(&self) -> bool;
}

impl Niche for i64 {
    const NONE: Self = i64::MIN;
    fn is_none(&self) -> bool {
        *self == i64::MIN
    }
}

impl Niche for i32 {
    const NONE: Self = i32::MIN;
    fn is_none(&self) -> bool {
        *self == i32::MIN
    }
}

impl Niche for f64 {
    const NONE: Self = f64::NAN;
    fn is_none(&self) -> bool {
        self.is_nan()
    }
}

impl Niche for f32 {
    const NONE: Self = f32::NAN;
    fn is_none(&self) -> bool {
        self.is_nan()
    }
}

/// A time with a measurement: none when the time is `i64::MIN`.
macro_rules! timed {
    ($($v:ty),*) => {$(
        impl Niche for (i64, $v) {
            const NONE: Self = (i64::MIN, 0.0);
            fn is_none(&self) -> bool {
                self.0 == i64::MIN
            }
        }
    )*};
}
timed!(f32, f64);

/// A position: none when the latitude is NaN.
impl Niche for (f64, f64) {
    const NONE: Self = (f64::NAN, 0.0);
    fn is_none(&self) -> bool {
        self.0.is_nan()
    }
}

/// `Option<T>` in the room of a `T`.
#[derive(Clone, Copy)]
pub struct Packed<T: Niche>(T);

impl<T: Niche> Packed<T> {
    /// None.
    pub const NONE: Self = Self(T::NONE);

    /// `Some(value)`. `value` must not be the niche (debug builds check).
    pub fn some(value: T) -> Self {
        debug_assert!(!value.is_none(), "the niche value stored as a value");
        Self(value)
    }

    /// The value, if any.
    pub fn get(self) -> Option<T> {
        (!self.0.is_none()).then_some(self.0)
    }

    /// Whether there is a value.
    pub fn is_some(self) -> bool {
        !self.0.is_none()
    }

    /// Whether there is none.
    pub fn is_none(self) -> bool {
        self.0.is_none()
    }

    /// Takes the value out, leaving none.
    pub fn take(&mut self) -> Option<T> {
        std::mem::replace(self, Self::NONE).get()
    }
}

impl<T: Niche> Default for Packed<T> {
    fn default() -> Self {
        Self::NONE
    }
}

/// `Some` of the niche itself becomes none: for a NaN measurement, every comparison is
/// false, as it is for none.
impl<T: Niche> From<Option<T>> for Packed<T> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::NONE, Self)
    }
}

/// Equal as the options they stand for (NaN, the niche of floats, equals nothing).
impl<T: Niche + PartialEq> PartialEq for Packed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl<T: Niche + fmt::Debug> fmt::Debug for Packed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl<T: Niche + Serialize> Serialize for Packed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

/// A written `Some` of the niche itself (never written by a `Packed`) reads as none.
impl<'de, T: Niche + Deserialize<'de>> Deserialize<'de> for Packed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<T>::deserialize(d)?.map_or(Self::NONE, Self))
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use bincode::Options;
    use proptest::prelude::*;

    use super::*;

    fn bytes<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::DefaultOptions::new().serialize(v).unwrap()
    }

    #[test]
    fn a_packed_value_takes_the_room_of_its_value() {
        assert_eq!(size_of::<Packed<i64>>(), 8);
        assert_eq!(size_of::<Packed<f32>>(), 4);
        assert_eq!(size_of::<Packed<(i64, f32)>>(), 16);
        assert_eq!(size_of::<Packed<(f64, f64)>>(), 16);
        assert_eq!(size_of::<Option<(i64, f32)>>(), 24);
    }

    #[test]
    fn nan_is_none_and_none_equals_none() {
        let nan: Packed<f32> = Some(f32::NAN).into();
        assert!(nan.is_none());
        assert_eq!(nan, Packed::NONE);
        assert_eq!(nan.get(), None);
        let mut v = Packed::some(1.5_f32);
        assert_eq!(v.take(), Some(1.5));
        assert_eq!(v, Packed::default());
    }

    proptest! {
        /// Written byte for byte as the `Option`, and read back as it was.
        #[test]
        fn written_and_read_as_the_option(
            t in proptest::option::of(i64::MIN + 1..=i64::MAX),
            x in proptest::option::of(-1e9f32..1e9),
            p in proptest::option::of((i64::MIN + 1..=i64::MAX, -1e300f64..1e300)),
        ) {
            let opts = bincode::DefaultOptions::new();
            let packed_t: Packed<i64> = t.into();
            prop_assert_eq!(bytes(&packed_t), bytes(&t));
            prop_assert_eq!(opts.deserialize::<Packed<i64>>(&bytes(&t)).unwrap(), packed_t);
            let packed_x: Packed<f32> = x.into();
            prop_assert_eq!(bytes(&packed_x), bytes(&x));
            prop_assert_eq!(opts.deserialize::<Packed<f32>>(&bytes(&x)).unwrap(), packed_x);
            let packed_p: Packed<(i64, f64)> = p.into();
            prop_assert_eq!(bytes(&packed_p), bytes(&p));
            prop_assert_eq!(opts.deserialize::<Packed<(i64, f64)>>(&bytes(&p)).unwrap(), packed_p);
        }
    }
}
