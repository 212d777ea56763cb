"""
ttweet: hashtag publish/subscribe with timelines (docs/protocol.md section 3).

Three modules, one concern each, so the hot path reads on its own:

 - L{netshare.services.ttweet.rules}: what a user name, a message and a
   hashtag string may be (pure functions, the texts of the wire contract);
 - L{netshare.services.ttweet.writer}: the batch writer, which makes
   published tweets durable a batch at a time, off the fan-out path;
 - L{netshare.services.ttweet.hub}: the L{Hub<netshare.services.ttweet.hub.Hub>}:
   who is online, the tag index, fan-out, the flood limit and timelines.
"""
