using ActorBlk.Actors.Serialization;
using Akka.Configuration;
using Akka.Hosting;

namespace ActorBlk.Actors.Hosting;

/// <summary>Akka.Hosting integration.</summary>
public static class ActorBlkHostingExtensions
{
    /// <summary>
    /// Adds ActorBlk to an actor system built with Akka.Hosting: the library's HOCON defaults, the
    /// serializer binding for its messages, the <see cref="BlockLayer"/> extension (registered in the
    /// <see cref="ActorRegistry"/> under <see cref="BlockLayer"/>), and the devices of
    /// <c>actorblk.devices</c> and of <paramref name="options"/>, then the stacked devices of
    /// <c>actorblk.stacked-devices</c> and of <paramref name="options"/>, created at start in that order.
    /// </summary>
    /// <example>
    /// <code>
    /// services.AddAkka("actorblk", (builder, sp) => builder.WithActorBlk(new ActorBlkOptions
    /// {
    ///     Devices = { new DeviceOptions { Name = "nullb0", Size = 1L &lt;&lt; 30, MemoryBacked = true } },
    /// }));
    /// </code>
    /// </example>
    public static AkkaConfigurationBuilder WithActorBlk(this AkkaConfigurationBuilder builder, ActorBlkOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        options ??= new ActorBlkOptions();

        builder.AddHocon(ActorBlkSettings.DefaultConfig(), HoconAddMode.Append);
        if (!string.IsNullOrWhiteSpace(options.Hocon))
        {
            builder.AddHocon(ConfigurationFactory.ParseString(options.Hocon), HoconAddMode.Prepend);
        }

        if (options.AddSerializer)
        {
            builder.WithCustomSerializer("actorblk", [typeof(IActorBlkMessage)], system => new ActorBlkHyperionSerializer(system));

            // Akka's serializers that can name a type or stop an actor, replaced under their ids
            // (README, "Security"); in front of the application's HOCON so it cannot undo them.
            builder.AddHocon(ActorBlkRemoting.SerializerConfig, HoconAddMode.Prepend);
        }

        var devices = options.Devices.ToArray();
        var stackedDevices = options.StackedDevices.ToArray();
        builder.AddStartup(async (system, registry) =>
        {
            var layer = BlockLayer.Get(system);
            registry.Register<BlockLayer>(layer.Guardian);
            foreach (var device in layer.Settings.Devices.Concat(devices))
            {
                await layer.CreateDeviceAsync(device).ConfigureAwait(false);
            }

            foreach (var stacked in layer.Settings.StackedDevices.Concat(stackedDevices))
            {
                await layer.CreateStackedDeviceAsync(stacked.Name).ConfigureAwait(false);
                await layer.LoadTableAsync(stacked.Name, stacked.Table, layer.Stopping).ConfigureAwait(false);
            }
        });
        return builder;
    }
}
