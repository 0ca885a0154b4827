r"""Launch the distilvpr mapping node (camera + LiDAR + odometry → place map with teacher and student).

    ros2 launch distilvpr_ros mapping.launch.py map_path:=/data/maps/town \
        teacher_checkpoint:=/models/teacher student_checkpoint:=/models/student use_sim_time:=true
    ros2 launch distilvpr_ros mapping.launch.py map_path:=maps/town teacher_checkpoint:=... \
        student_checkpoint:=... bag:=bags/drive_1 rviz:=true       # play a bag (sim time) and watch in RViz

Parameters come from ``config/mapping.yaml`` first, then the launch arguments (later entries win).
String arguments are passed as strings (``ParameterValue(..., value_type=str)``), so an empty path
stays "" instead of becoming YAML null. Input topics are remappable with the ``*_topic`` arguments;
``loop_closure`` can go to LIO-SAM's ``lio_loop/loop_closure_detection`` with ``loop_closure_topic``.
The arguments both launch files share (namespace, use_sim_time, autostart, rviz, bag, ...) live in
``distilvpr_ros/ros/launch_options.py``.
"""

from launch import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from distilvpr_ros.ros import launch_options as common

ARGUMENTS = [
    ("map_path", "map", "map folder to write (resumed when it exists and map.resume is true)"),
    ("teacher_checkpoint", "", "teacher checkpoint folder"),
    ("student_checkpoint", "", "camera-student checkpoint folder"),
    ("lidar_topic", "lidar/points", "sensor_msgs/PointCloud2 input"),
    ("odom_topic", "odom", "nav_msgs/Odometry input"),
]


def generate_launch_description():
    node = Node(
        package="distilvpr_ros",
        executable="mapping_node",
        name="distilvpr_mapping",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[
            common.config_file("mapping.yaml"),
            {
                **common.common_parameters(),
                "map.path": ParameterValue(LaunchConfiguration("map_path"), value_type=str),
                "models.teacher_checkpoint": ParameterValue(LaunchConfiguration("teacher_checkpoint"), value_type=str),
                "models.student_checkpoint": ParameterValue(LaunchConfiguration("student_checkpoint"), value_type=str),
            },
        ],
        remappings=common.common_remappings() + [
            ("lidar/points", LaunchConfiguration("lidar_topic")),
            ("odom", LaunchConfiguration("odom_topic")),
        ],
    )
    return LaunchDescription(common.declare_arguments(ARGUMENTS) + common.environment_actions() + [node]
                             + common.optional_actions())
