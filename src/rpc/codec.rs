//! The protobuf codec of both services: prost's, except that a message that cannot be decoded is
//! INVALID_ARGUMENT, not INTERNAL. On a server the undecodable message is the client's request,
//! and the client's to fix; INTERNAL would tell it the server is broken and invite a retry. (The
//! generated clients use the same codec: a response that does not decode, which only a broken or
//! foreign server sends, then also reads as INVALID_ARGUMENT, with a message that says so.)

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct WireCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Codec for WireCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = WireDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder(self.0.decoder())
    }
}

/// prost's decoder with decoding failures reported as INVALID_ARGUMENT.
#[derive(Debug, Clone, Default)]
pub struct WireDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for WireDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            Code::Internal => Status::invalid_argument(format!(
                "the message is not a valid {} ({})",
                short_type_name::<U>(),
                status.message()
            )),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// `AskRequest` rather than `hch::rpc::pb::AskRequest`.
fn short_type_name<U>() -> &'static str {
    let full = std::any::type_name::<U>();
    full.rsplit("::").next().unwrap_or(full)
}
