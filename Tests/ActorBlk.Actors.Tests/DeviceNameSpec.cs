using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Names that reach the node through the .NET API (<see cref="DeviceOptions.Name"/>,
/// <see cref="DeviceOptions.TagSetName"/>, a stacked device's name) are held to the rule
/// hocon.conf's are (README, "Configuration"). A review: the device-name pattern ended in '$',
/// which .NET also matches before a final newline, so "d0\n" passed; created through the API it
/// failed the guardian with an illegal actor name and stopped the whole node, and so did a tag set
/// named "a/b" or "a\nb". A stacked device named "m0\n" was created.
/// </summary>
public sealed class DeviceNameSpec : Akka.TestKit.Xunit2.TestKit
{
    public DeviceNameSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
    }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    [Theory]
    [InlineData("d0\n", "d0\\x0a")]
    [InlineData("d0\r\n", "d0\\x0d\\x0a")]
    [InlineData("d\t0", "d\\x090")]
    [InlineData("d0\u007f", "d0\\x7f")]
    public void A_name_with_a_control_character_is_not_a_device_name(string name, string shown)
    {
        Assert.False(DeviceOptions.IsDeviceName(name));
        var refused = Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Name = name }.Validate());
        Assert.Equal("name", refused.Option);
        Assert.Equal(name, refused.Device);
        Assert.Equal($"device '{shown}': option 'name': '{shown}' is not a device name (letters, digits, '-', '_', '.'; at most 32 characters; not . or ..).", refused.Message);
    }

    [Fact]
    public async Task A_device_or_stacked_device_named_with_a_newline_is_refused_and_the_node_goes_on()
    {
        var refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.CreateDeviceAsync(new DeviceOptions { Name = "d0\n", Size = 1 << 20 }));
        Assert.Equal("name", refused.Option);
        refused = await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.CreateStackedDeviceAsync("m0\n"));
        Assert.Equal("name", refused.Option);
        Assert.False(Layer.TryGetDevice("m0\n", out _));

        var device = await Layer.CreateDeviceAsync(new DeviceOptions { Name = "d0", Size = 1 << 20 });
        Assert.Equal("d0", device.Name);
    }

    [Theory]
    [InlineData("a/b")]
    [InlineData("a b")]
    [InlineData("a\nb")]
    [InlineData("a\t")]
    public async Task A_tag_set_name_that_is_not_a_name_is_refused_and_the_node_goes_on(string name)
    {
        var options = new DeviceOptions { Name = "t0", Size = 1 << 20, SharedTags = true, TagSetName = name };
        var refused = Assert.Throws<DeviceOptionsException>(options.Validate);
        Assert.Equal("tag_set", refused.Option);
        Assert.DoesNotContain('\n', refused.Message);
        await Assert.ThrowsAsync<DeviceOptionsException>(() => Layer.CreateDeviceAsync(options));

        var device = await Layer.CreateDeviceAsync(options with { TagSetName = "pool-1.a_b" });
        Assert.Equal("t0", device.Name);
    }

    // A review: the check first took only letters, digits, '-', '_' and '.', so names Akka takes in
    // an actor name, which worked before there was a check, stopped the node at its start.
    [Theory]
    [InlineData("db:fast")]
    [InlineData("pool+1")]
    [InlineData("a@b=c,d!e~f*g'h;i$j&k")]
    public async Task A_tag_set_name_akka_takes_in_an_actor_name_is_accepted(string name)
    {
        var device = await Layer.CreateDeviceAsync(new DeviceOptions { Name = "t1", Size = 1 << 20, SharedTags = true, TagSetName = name });
        Assert.Equal(name, device.Queue.TagSet.Options.Name);
        Assert.Equal(0, await Layer.DestroyDeviceAsync("t1"));
    }
}
