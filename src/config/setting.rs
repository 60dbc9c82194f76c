//! How one setting is declared: the `section!` macro, the `Value` trait that turns flag,
//! environment, TOML and default text into a typed value, and the per-value checks.
//! Nothing here knows any particular setting.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::{EnumValueParser, PossibleValuesParser, TypedValueParser, ValueParser};
use clap::{Arg, ArgAction, ArgMatches, ValueEnum};

use super::ConfigError;

/// Declares a section: its settings, each once, with type, default, help and check.
///
/// ```text
/// section! {
///     /// What the section is about.
///     pub struct Net (prefix "") {
///         /// Help text shown by --help, followed by "[default: …]".
///         #[arg(value_name = "ADDR:PORT", env = "WSGATE_LISTEN")]   // optional, clap's Arg
///         listen: SocketAddr = "127.0.0.1:8080";
///         /// …
///         max_topic_len: usize = "128", check within(1, 1024);       // optional check
///     }
///     derived {                        // optional: computed by `Finish::finish`
///         /// …
///         echo: wsgate_proto::Limits,
///     }
/// }
/// ```
///
/// The key of a setting is the prefix and the field name (`uring_` + `bufs`); the flag is
/// the key with dashes (`--uring-bufs`); the TOML file takes either spelling. The default
/// is text, parsed like a flag, and shown in `--help` as written (an empty one as `none`).
/// It generates the resolved struct, `Raw` (every field an `Option`: clap's `Args` and
/// the TOML reader), `Raw::over` (precedence) and `Raw::resolve` (defaults, checks, then
/// the section's `Finish::finish`).
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $Section:ident (prefix $prefix:literal) {
            $(
                $(#[doc = $doc:literal])+
                $(#[arg($($attr:ident = $attr_value:expr),* $(,)?)])?
                $name:ident: $ty:ty = $default:literal $(, check $check:expr)?;
            )*
        }
        $(
            derived {
                $( $(#[doc = $ddoc:literal])+ $dname:ident: $dty:ty, )*
            }
        )?
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug)]
        pub struct $Section {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
            $($( $(#[doc = $ddoc])+ pub $dname: $dty, )*)?
        }

        impl Default for $Section {
            /// The built-in defaults, resolved.
            fn default() -> Self {
                Raw::default().resolve().expect("the built-in defaults are valid")
            }
        }

        /// The section as given (flags, environment or TOML file); `None` takes the default.
        #[derive(Clone, Debug, Default)]
        pub struct Raw {
            $( pub $name: Option<$ty>, )*
        }

        impl Raw {
            /// `self`'s settings where given, `base`'s otherwise.
            pub(super) fn over(self, base: Self) -> Self {
                Self { $( $name: self.$name.or(base.$name), )* }
            }

            /// Takes this section's keys out of a TOML table whose keys use underscores.
            pub(super) fn from_toml(
                table: &mut toml::Table,
            ) -> Result<Self, $crate::config::ConfigError> {
                Ok(Self {
                    $(
                        $name: {
                            let key = $crate::config::setting::key($prefix, stringify!($name));
                            match table.remove(&key) {
                                None => None,
                                Some(value) => Some(
                                    <$ty as $crate::config::setting::Value>::from_toml(value)
                                        .map_err(|reason| {
                                            $crate::config::ConfigError::invalid(key, reason)
                                        })?,
                                ),
                            }
                        },
                    )*
                })
            }

            /// Fills in the defaults, checks each value, then the section as a whole.
            pub(super) fn resolve(self) -> Result<$Section, $crate::config::ConfigError> {
                let section = $Section {
                    $(
                        $name: match self.$name {
                            Some(value) => value,
                            None => <$ty as $crate::config::setting::Value>::parse($default)
                                .expect("the built-in defaults parse"),
                        },
                    )*
                    $($( $dname: Default::default(), )*)?
                };
                $($(
                    ($check)(&section.$name).map_err(|reason| {
                        $crate::config::ConfigError::invalid(
                            $crate::config::setting::key($prefix, stringify!($name)),
                            reason,
                        )
                    })?;
                )?)*
                $crate::config::setting::Finish::finish(section)
            }
        }

        impl clap::FromArgMatches for Raw {
            fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
                Self::from_arg_matches_mut(&mut matches.clone())
            }

            fn from_arg_matches_mut(
                matches: &mut clap::ArgMatches,
            ) -> Result<Self, clap::Error> {
                Ok(Self {
                    $(
                        $name: <$ty as $crate::config::setting::Value>::from_matches(
                            matches,
                            &$crate::config::setting::key($prefix, stringify!($name)),
                        )?,
                    )*
                })
            }

            fn update_from_arg_matches(
                &mut self,
                matches: &clap::ArgMatches,
            ) -> Result<(), clap::Error> {
                let given = Self::from_arg_matches(matches)?;
                *self = given.over(std::mem::take(self));
                Ok(())
            }
        }

        impl clap::Args for Raw {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                cmd $(
                    .arg(
                        <$ty as $crate::config::setting::Value>::arg(
                            $crate::config::setting::arg(
                                $crate::config::setting::key($prefix, stringify!($name)),
                                concat!($($doc),+),
                                $default,
                            ),
                        )
                        $($( .$attr($attr_value) )*)?
                    )
                )*
            }

            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }
    };
}

pub(crate) use section;

/// What a section checks and computes once each of its values is in place.
pub trait Finish: Sized {
    /// Checks values against each other and fills in the `derived` fields.
    fn finish(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

/// A setting's key: how the TOML file and error messages name it (`uring_bufs`).
pub fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

/// The flag for a key, before its type adds how it takes a value.
pub fn arg(key: String, doc: &'static str, default: &'static str) -> Arg {
    let shown = if default.is_empty() { "none" } else { default };
    Arg::new(key.clone())
        .long(key.replace('_', "-"))
        .value_name(key.to_uppercase())
        .help(format!(
            "{} [default: {shown}]",
            doc.trim().trim_end_matches('.')
        ))
}

/// A type a setting can have: parsed from text (flags, environment, built-in defaults)
/// and converted from a TOML value, the same way wherever it is given.
pub trait Value: Sized + Clone + Send + Sync + 'static {
    /// Parses a flag's, an environment variable's or a default's text.
    fn parse(text: &str) -> Result<Self, String>;

    /// Converts a TOML value; by default a string, parsed like a flag.
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(text) => Self::parse(&text),
            other => Err(format!("expected a string, found {}", other.type_str())),
        }
    }

    /// How the flag takes its value.
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(ValueParser::new(|text: &str| Self::parse(text)))
            .action(ArgAction::Set)
    }

    /// The flag's value, if given.
    fn from_matches(matches: &mut ArgMatches, id: &str) -> Result<Option<Self>, clap::Error> {
        matches.try_remove_one::<Self>(id).map_err(matches_error)
    }
}

fn matches_error(e: clap::parser::MatchesError) -> clap::Error {
    clap::Error::raw(clap::error::ErrorKind::ValueValidation, e)
}

macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn parse(text: &str) -> Result<Self, String> {
                text.trim().parse().map_err(|e| format!("{text:?}: {e}"))
            }

            fn from_toml(value: toml::Value) -> Result<Self, String> {
                match value {
                    toml::Value::Integer(n) => {
                        Self::try_from(n).map_err(|_| format!("{n} is out of range"))
                    }
                    other => Err(format!("expected an integer, found {}", other.type_str())),
                }
            }
        }
    )*};
}

integer_value!(u16, u32, u64, usize);

impl Value for bool {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("{text:?} is not true or false"))
    }

    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Boolean(b) => Ok(b),
            other => Err(format!(
                "expected true or false, found {}",
                other.type_str()
            )),
        }
    }

    /// `--flag` alone means true; `--flag false` is accepted too.
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(PossibleValuesParser::new(["true", "false"]).map(|b| b == "true"))
            .action(ArgAction::Set)
            .value_name("BOOL")
            .num_args(0..=1)
            .default_missing_value("true")
    }
}

impl Value for String {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

/// A string where empty means none.
impl Value for Option<String> {
    fn parse(text: &str) -> Result<Self, String> {
        Ok((!text.is_empty()).then(|| text.to_owned()))
    }
}

impl Value for SocketAddr {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("{text:?} is not an ADDR:PORT"))
    }
}

impl Value for Duration {
    fn parse(text: &str) -> Result<Self, String> {
        parse_duration(text)
            .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 10s or 5m"))
    }

    /// A string with a unit; or the number 0 (`max_batch_delay = 0`, as `--max-batch-delay
    /// 0` takes it), since no unit makes zero ambiguous. Other bare numbers are refused.
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(text) => Self::parse(&text),
            toml::Value::Integer(0) => Ok(Duration::ZERO),
            toml::Value::Integer(n) => Err(format!(
                "{n} has no unit: write a duration like \"{n}ms\" or \"{n}s\""
            )),
            other => Err(format!("expected a duration, found {}", other.type_str())),
        }
    }
}

/// A list: comma-separated (and repeatable) as a flag, an array of strings in TOML.
/// Empty items are skipped.
impl Value for Vec<String> {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(items(text.split(',').map(str::to_owned)))
    }

    fn from_toml(value: toml::Value) -> Result<Self, String> {
        let expected = || format!("expected an array of strings, found {}", value.type_str());
        let toml::Value::Array(array) = &value else {
            return Err(expected());
        };
        let mut out = Vec::with_capacity(array.len());
        for item in array {
            let toml::Value::String(s) = item else {
                return Err(expected());
            };
            out.push(s.clone());
        }
        Ok(items(out))
    }

    fn arg(arg: Arg) -> Arg {
        arg.value_parser(ValueParser::string())
            .action(ArgAction::Append)
            .value_delimiter(',')
    }

    fn from_matches(matches: &mut ArgMatches, id: &str) -> Result<Option<Self>, clap::Error> {
        let given = matches
            .try_remove_many::<String>(id)
            .map_err(matches_error)?;
        Ok(given.map(items))
    }
}

/// A list where empty means none.
impl Value for Option<Vec<String>> {
    fn parse(text: &str) -> Result<Self, String> {
        Vec::parse(text).map(some_items)
    }

    fn from_toml(value: toml::Value) -> Result<Self, String> {
        Vec::from_toml(value).map(some_items)
    }

    fn arg(arg: Arg) -> Arg {
        <Vec<String>>::arg(arg)
    }

    fn from_matches(matches: &mut ArgMatches, id: &str) -> Result<Option<Self>, clap::Error> {
        Ok(Vec::from_matches(matches, id)?.map(some_items))
    }
}

fn items(list: impl IntoIterator<Item = String>) -> Vec<String> {
    list.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn some_items(list: Vec<String>) -> Option<Vec<String>> {
    (!list.is_empty()).then_some(list)
}

/// `Value` for a `clap::ValueEnum`: `--help` lists the possible values.
macro_rules! enum_value {
    ($($t:ty),*) => {$(
        impl $crate::config::setting::Value for $t {
            fn parse(text: &str) -> Result<Self, String> {
                <Self as clap::ValueEnum>::from_str(text, false)
            }

            fn arg(arg: clap::Arg) -> clap::Arg {
                $crate::config::setting::enum_arg::<Self>(arg)
            }
        }
    )*};
}

pub(crate) use enum_value;

pub fn enum_arg<E: ValueEnum + Clone + Send + Sync + 'static>(arg: Arg) -> Arg {
    arg.value_parser(EnumValueParser::<E>::new())
        .action(ArgAction::Set)
}

/// Parses "250ms", "10s", "5m", "1h" (a number and a unit), and "0" (zero needs none:
/// the settings where 0 turns something off say so).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs <= 1e9).then(|| Duration::from_secs_f64(secs))
}

/// Check: not zero.
pub fn positive<T: Default + PartialEq>(value: &T) -> Result<(), String> {
    if *value == T::default() {
        return Err("must be greater than 0".into());
    }
    Ok(())
}

/// Check: between `low` and `high`, both included.
pub fn within<T: Copy + PartialOrd + std::fmt::Display>(
    low: T,
    high: T,
) -> impl Fn(&T) -> Result<(), String> {
    move |value| {
        if !(low..=high).contains(value) {
            return Err(format!("must be between {low} and {high}"));
        }
        Ok(())
    }
}

/// Check: a power of two no greater than `max`.
pub fn power_of_two_up_to<T: Copy + Into<u64>>(max: u64) -> impl Fn(&T) -> Result<(), String> {
    move |value| {
        let value: u64 = (*value).into();
        if !value.is_power_of_two() || value > max {
            return Err(format!("must be a power of two up to {max}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("00"), None);
        assert_eq!(parse_duration("10 parsecs"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1e300h"), None);
    }

    #[test]
    fn toml_values_have_the_right_type() {
        let v = |text: &str| text.parse::<toml::Table>().unwrap().remove("v").unwrap();
        assert_eq!(usize::from_toml(v("v = 3")), Ok(3));
        assert!(usize::from_toml(v("v = -1"))
            .unwrap_err()
            .contains("out of range"));
        assert!(usize::from_toml(v("v = \"3\""))
            .unwrap_err()
            .contains("integer"));
        assert!(u16::from_toml(v("v = 65536")).is_err());
        assert_eq!(bool::from_toml(v("v = false")), Ok(false));
        assert!(bool::from_toml(v("v = \"no\"")).is_err());
        assert_eq!(
            Duration::from_toml(v("v = \"5m\"")),
            Ok(Duration::from_secs(300))
        );
        assert!(Duration::from_toml(v("v = 5")).is_err());
        assert_eq!(
            <Vec<String>>::from_toml(v("v = [\"a\", \" \", \"b\"]")),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(<Vec<String>>::from_toml(v("v = [\"a\", 1]")).is_err());
        assert!(<Vec<String>>::from_toml(v("v = \"a\"")).is_err());
        assert_eq!(<Option<Vec<String>>>::from_toml(v("v = []")), Ok(None));
        assert_eq!(<Option<String>>::from_toml(v("v = \"\"")), Ok(None));
        assert!(SocketAddr::from_toml(v("v = \"nowhere\"")).is_err());
    }

    #[test]
    fn checks() {
        assert!(positive(&0usize).is_err());
        assert!(positive(&Duration::ZERO).is_err());
        assert_eq!(positive(&1u64), Ok(()));
        assert_eq!(within(1, 3)(&3), Ok(()));
        assert_eq!(within(1, 3)(&4), Err("must be between 1 and 3".into()));
    }
}
