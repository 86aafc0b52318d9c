//! [`Packed`]: an `Option` that takes no more room than its value, for state kept per device
//! and vehicle. An `Option<i64>` or `Option<(i64, f32)>` takes 8 bytes more than its value,
//! and a few of them decide which allocator size class a device's state falls in (and how
//! large every vehicle's slot is). A `Packed` value reserves one value of its type as none
//! instead (`i64::MIN` for times, NaN for measurements, which decoding never lets through).
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

    /// Sets the value (or none).
    pub fn set(&mut self, value: Option<T>) {
        *self = value.into();
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
