using ActorBlk.Hardware.Requests;
using Xunit;

namespace ActorBlk.Hardware.Tests.Requests;

/// <summary>blk-mq-semantics §3.8 item 37.</summary>
public sealed class BlockStatusSpec
{
    [Theory]
    [InlineData(BlockStatus.Ok, 0, 0)]
    [InlineData(BlockStatus.NotSupported, 1, -95)]
    [InlineData(BlockStatus.Timeout, 2, -110)]
    [InlineData(BlockStatus.NoSpace, 3, -28)]
    [InlineData(BlockStatus.Transport, 4, -67)]
    [InlineData(BlockStatus.Target, 5, -121)]
    [InlineData(BlockStatus.ReservationConflict, 6, -52)]
    [InlineData(BlockStatus.Medium, 7, -61)]
    [InlineData(BlockStatus.Protection, 8, -84)]
    [InlineData(BlockStatus.Resource, 9, -12)]
    [InlineData(BlockStatus.IoError, 10, -5)]
    [InlineData(BlockStatus.Again, 12, -11)]
    [InlineData(BlockStatus.DeviceResource, 13, -16)]
    [InlineData(BlockStatus.Offline, 16, -19)]
    [InlineData(BlockStatus.DurationLimit, 17, -62)]
    [InlineData(BlockStatus.Invalid, 18, -22)]
    public void Values_and_errnos_are_the_kernels(BlockStatus status, int value, int errno)
    {
        Assert.Equal(value, (int)status);
        Assert.Equal(errno, status.ToErrno());
        Assert.Equal(status, BlockStatusExtensions.FromErrno(errno));
    }

    [Fact]
    public void An_unknown_errno_is_an_io_error()
    {
        Assert.Equal(BlockStatus.IoError, BlockStatusExtensions.FromErrno(-9999));
        Assert.Equal(-5, ((BlockStatus)200).ToErrno());
    }
}
