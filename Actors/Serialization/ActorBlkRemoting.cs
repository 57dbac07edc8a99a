using Akka.Configuration;

namespace ActorBlk.Actors.Serialization;

/// <summary>
/// The remoting configuration every ActorBlk actor system uses, node or client (README,
/// "Security"): ActorBlk messages through the allow-listed Hyperion serializer, and Akka's
/// serializers that can name a type or stop an actor replaced by guarded ones under the same ids.
/// <c>WithActorBlk</c> applies it; a raw-HOCON system puts <see cref="SerializerConfig"/> in front of
/// its own configuration.
/// </summary>
public static class ActorBlkRemoting
{
    /// <summary>The serializer replacements and the ActorBlk binding.</summary>
    public static Config SerializerConfig { get; } = ConfigurationFactory.ParseString(SerializerHocon);

    /// <summary>
    /// Untrusted mode with the paths clients use (<c>/user/actorblk</c> and its sysfs actor) and the
    /// cluster daemon paths members use trusted for actor selections.
    /// </summary>
    public static Config UntrustedModeConfig { get; } = ConfigurationFactory.ParseString(UntrustedHocon);

    /// <summary>The paths <see cref="UntrustedModeConfig"/> trusts.</summary>
    public static IReadOnlyList<string> TrustedSelectionPaths { get; } =
    [
        "/user/actorblk", "/user/actorblk/sysfs",
        "/system/cluster/core/daemon", "/system/cluster/heartbeatReceiver",
    ];

    /// <summary>The HOCON of <see cref="SerializerConfig"/>.</summary>
    public const string SerializerHocon = """
        akka.actor {
          serializers {
            actorblk = "ActorBlk.Actors.Serialization.ActorBlkHyperionSerializer, ActorBlk.Actors"
            json = "ActorBlk.Actors.Serialization.ActorBlkJsonSerializer, ActorBlk.Actors"
            akka-misc = "ActorBlk.Actors.Serialization.GuardedMiscMessageSerializer, ActorBlk.Actors"
            akka-system-msg = "ActorBlk.Actors.Serialization.GuardedSystemMessageSerializer, ActorBlk.Actors"
            daemon-create = "ActorBlk.Actors.Serialization.RefusingDaemonMsgCreateSerializer, ActorBlk.Actors"
            proto = "ActorBlk.Actors.Serialization.GuardedProtobufSerializer, ActorBlk.Actors"
          }
          serialization-bindings {
            "ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors" = actorblk
          }
        }
        """;

    private const string UntrustedHocon = """
        akka.remote {
          untrusted-mode = on
          trusted-selection-paths = ["/user/actorblk", "/user/actorblk/sysfs", "/system/cluster/core/daemon", "/system/cluster/heartbeatReceiver"]
        }
        """;
}
