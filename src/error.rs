//! AMQP errors, mapped to reply codes in one place.
//!
//! Every failure a client can cause ends up as an [`AmqpError`]: a reply code,
//! RabbitMQ's text for it, and whether it closes the channel (soft error) or the
//! whole connection (hard error). The class and method ids of the offending
//! method travel with it so the close frame can name them, as RabbitMQ does.

use std::fmt;

/// Reply codes of AMQP 0-9-1, with RabbitMQ's upper-case names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ReplyCode {
    ContentTooLarge = 311,
    NoRoute = 312,
    NoConsumers = 313,
    ConnectionForced = 320,
    InvalidPath = 402,
    AccessRefused = 403,
    NotFound = 404,
    ResourceLocked = 405,
    PreconditionFailed = 406,
    FrameError = 501,
    SyntaxError = 502,
    CommandInvalid = 503,
    ChannelError = 504,
    UnexpectedFrame = 505,
    ResourceError = 506,
    NotAllowed = 530,
    NotImplemented = 540,
    InternalError = 541,
}

impl ReplyCode {
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// Soft errors close the channel; hard ones close the connection.
    /// RabbitMQ treats 403/404/405/406 as channel errors and everything from
    /// 500 up as connection errors.
    pub fn is_hard(self) -> bool {
        (self as u16) >= 500 || self == ReplyCode::InvalidPath
    }
}

/// An error to report to the client with a channel.close or connection.close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpError {
    pub code: ReplyCode,
    /// The text after "CODE_NAME - ".
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
    /// Force a connection close even for a soft code (e.g. a soft error on channel 0).
    pub hard: bool,
}

impl AmqpError {
    pub fn new(code: ReplyCode, text: impl Into<String>) -> Self {
        AmqpError {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
            hard: code.is_hard(),
        }
    }
    pub fn with_method(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }
    pub fn hard(mut self) -> Self {
        self.hard = true;
        self
    }
    /// "NOT_FOUND - no queue 'q' in vhost '/'", the reply text RabbitMQ sends.
    pub fn reply_text(&self) -> String {
        let mut t = format!("{} - {}", self.code.name(), self.text);
        // reply-text is a shortstr: at most 255 bytes.
        if t.len() > 255 {
            let mut cut = 255;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
        }
        t
    }

    pub fn not_found(what: &str, name: &str, vhost: &str) -> Self {
        Self::new(
            ReplyCode::NotFound,
            format!("no {what} '{name}' in vhost '{vhost}'"),
        )
    }
    pub fn precondition(text: impl Into<String>) -> Self {
        Self::new(ReplyCode::PreconditionFailed, text)
    }
    pub fn access_refused(text: impl Into<String>) -> Self {
        Self::new(ReplyCode::AccessRefused, text)
    }
    /// 403 for any operation on the default exchange (declare, delete,
    /// bind, unbind), with RabbitMQ's text.
    pub fn default_exchange() -> Self {
        Self::access_refused("operation not permitted on the default exchange")
    }
    pub fn command_invalid(text: impl Into<String>) -> Self {
        Self::new(ReplyCode::CommandInvalid, text)
    }
    pub fn frame_error(text: impl Into<String>) -> Self {
        Self::new(ReplyCode::FrameError, text)
    }
    pub fn unexpected_frame(text: impl Into<String>) -> Self {
        Self::new(ReplyCode::UnexpectedFrame, text)
    }
    pub fn channel_error(text: impl Into<String>) -> Self {
        Self::new(ReplyCode::ChannelError, text)
    }
    pub fn not_allowed(text: impl Into<String>) -> Self {
        Self::new(ReplyCode::NotAllowed, text)
    }
    pub fn resource_locked(text: impl Into<String>) -> Self {
        Self::new(ReplyCode::ResourceLocked, text)
    }
    pub fn internal(text: impl Into<String>) -> Self {
        Self::new(ReplyCode::InternalError, text)
    }
    pub fn not_implemented(text: impl Into<String>) -> Self {
        Self::new(ReplyCode::NotImplemented, text)
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code as u16, self.reply_text())
    }
}

impl std::error::Error for AmqpError {}

pub type AmqpResult<T> = Result<T, AmqpError>;
