using ActorBlk.Actors.Clustering;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// A remote device handle's <c>Reconnected</c> and <c>Disconnected</c> are raised by the node's
/// remote-device actor. An application handler that throws must not reach that actor (a restart
/// loses what it tracks: the handles' slots, their queues) nor keep the handlers after it, a
/// mirror's leg among them, from hearing.
/// </summary>
public sealed class RemoteDeviceEventsSpec
{
    [Fact]
    public void A_throwing_handler_is_skipped_and_the_handlers_after_it_still_hear()
    {
        var target = new RemoteDeviceTarget(null);
        var reconnected = 0;
        var disconnected = 0;
        target.Reconnected += (_, _) => throw new InvalidOperationException("an application's bug");
        target.Reconnected += (_, _) => reconnected++;
        target.Disconnected += (_, _) => throw new InvalidOperationException("an application's bug");
        target.Disconnected += (_, _) => disconnected++;

        target.Disconnect(this);
        target.Replace(null!, this);

        Assert.Equal(1, disconnected);
        Assert.Equal(1, reconnected);
        Assert.Equal(1, target.Incarnation);
    }
}
